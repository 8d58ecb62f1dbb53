"""The exception hierarchy.

One root, one family per layer, and one exit code per kind of failure, so the CLI
maps any error to its documented exit code in a single place. Messages never hold a
secret value: they name paths, principals and key ids only.
"""

from __future__ import annotations


class MLSecretsError(Exception):
    """Root of every error this package raises on purpose."""

    exit_code = 1


class InvalidInput(MLSecretsError, ValueError):
    """The caller asked for something malformed: a bad path, an oversize value."""

    exit_code = 2


class ConfigurationError(MLSecretsError):
    """The settings are incomplete or contradictory; the message says which one to fix."""


class AccessDenied(MLSecretsError):
    """Authentication or authorisation failed; a denied audit record was written."""

    exit_code = 3


class Unauthenticated(AccessDenied):
    """No valid credential: none given, unknown, malformed, revoked or expired."""


class NotFound(MLSecretsError):
    """The secret, version, principal or key does not exist (or is deleted)."""

    exit_code = 4


class IntegrityError(MLSecretsError):
    """Authentication of stored data failed.

    Deliberately opaque: a wrong key, a flipped bit, a truncated blob and data moved
    from another path all raise this same error, so a caller learns nothing from which.
    """

    exit_code = 5


# --- keys -----------------------------------------------------------------------------
class KeyProviderError(MLSecretsError):
    """The HSM could not do what was asked (not an integrity failure)."""


class HSMUnavailable(KeyProviderError):
    """The PKCS#11 module, token or login is not usable; the message says what to check."""


class KeyMissing(KeyProviderError):
    """A key the store refers to is not on the token: a configuration or integrity problem,
    never a plain "not found" (which would let a caller fall back to another source)."""


# --- store ----------------------------------------------------------------------------
class StoreError(MLSecretsError):
    """The database could not be reached or refused an operation."""


class VersionConflict(StoreError, InvalidInput):
    """A check-and-set write named a version that is no longer the newest."""

    exit_code = 2


# --- policy ---------------------------------------------------------------------------
class PolicyError(InvalidInput):
    """A grant, role or pattern is not valid."""


# --- rotation -------------------------------------------------------------------------
class RotationBusy(MLSecretsError):
    """Another run holds the secret's rotation (its lease has not run out)."""


class RotationFailed(MLSecretsError):
    """A rotation step failed; ``current`` is untouched and the next run resumes."""


# --- audit ----------------------------------------------------------------------------
class AuditError(MLSecretsError):
    """The audit record could not be written, so the action did not happen."""


class AuditChainBroken(IntegrityError):
    """Verification found a record that was changed, inserted, deleted or reordered."""

    def __init__(self, message: str, *, chain: int, seq: int | None) -> None:
        super().__init__(message)
        self.chain = chain
        self.seq = seq
