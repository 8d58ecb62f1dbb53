#!/bin/sh
# First start: provision the dev vault (idempotent), then run the command.
set -eu
mlsecrets init --dev >&2
exec "$@"
