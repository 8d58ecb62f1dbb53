#!/bin/sh
# The init job: Airflow's schema, then the vault (SoftHSM2 token, schema, keys, the first
# security engineer, whose token lands in the vault volume, mode 0600). Idempotent.
set -eu
airflow db migrate
mlsecrets init --dev
echo "mlsecrets: vault ready; the first security engineer's token is in $MLSECRETS_HOME/admin.token" >&2
