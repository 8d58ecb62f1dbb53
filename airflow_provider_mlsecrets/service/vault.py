"""The vault: the one entry point every surface uses. Nothing else touches keys or tables."""

from __future__ import annotations

import getpass
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from sqlalchemy import func, select

from airflow_provider_mlsecrets.audit import anchor
from airflow_provider_mlsecrets.audit import log as audit_log
from airflow_provider_mlsecrets.audit.record import Entry, Outcome, format_ts
from airflow_provider_mlsecrets.errors import KeyMissing
from airflow_provider_mlsecrets.keys import KeyProvider, kek_label
from airflow_provider_mlsecrets.policy.roles import Capability, Role
from airflow_provider_mlsecrets.service._core import Caller, Core, process_context, utcnow
from airflow_provider_mlsecrets.service.access import (
    AccessService,
    active_engineers,
    add_principal,
    parse_name,
)
from airflow_provider_mlsecrets.service.alerts import AlertService
from airflow_provider_mlsecrets.service.audit import AuditService
from airflow_provider_mlsecrets.service.backup import BackupService
from airflow_provider_mlsecrets.service.break_glass import BreakGlassService, ensure_policy
from airflow_provider_mlsecrets.service.insight import InsightService
from airflow_provider_mlsecrets.service.keys import KeyService
from airflow_provider_mlsecrets.service.rotation import RotationService
from airflow_provider_mlsecrets.service.secrets import SecretsService
from airflow_provider_mlsecrets.settings import Settings
from airflow_provider_mlsecrets.store import models
from airflow_provider_mlsecrets.store.engine import safe_url


@dataclass(frozen=True)
class InitResult:
    vault_id: str
    created: list[str] = field(default_factory=list)
    admin_name: str | None = None
    admin_token: str | None = field(default=None, repr=False)

    @property
    def changed(self) -> bool:
        return bool(self.created)


@dataclass(frozen=True)
class KeyView:
    label: str
    version: int
    state: str
    created_at: str
    versions_wrapped: int
    sensitive: bool | None
    extractable: bool | None


class Vault:
    """``vault.secrets``, ``.access``, ``.audit``, ``.keys`` and ``.rotation`` hold the
    operations; every
    one takes a :class:`Caller` and is authenticated, authorised and audited."""

    def __init__(self, settings: Settings, *, keys: KeyProvider | None = None) -> None:
        self.core = Core(settings, keys)
        self.secrets = SecretsService(self.core)
        self.access = AccessService(self.core)
        self.audit = AuditService(self.core)
        self.keys = KeyService(self.core)
        self.backups = BackupService(self.core)
        self.rotation = RotationService(self.core, self.secrets)
        self.insight = InsightService(self.core)
        self.alerts = AlertService(self.core)
        self.break_glass = BreakGlassService(self.core)

    @property
    def settings(self) -> Settings:
        return self.core.settings

    def initialise(self, admin_name: str = "admin",
                   deliver_token: Callable[[str], None] | None = None) -> InitResult:
        """Create what is missing (schema, vault id, keys, audit chain, first security
        engineer) and nothing else; running it again changes nothing and says so.

        ``deliver_token`` receives a new security engineer's token before the transaction
        commits: if it cannot be stored, the engineer is not created either."""
        from airflow_provider_mlsecrets.store import migrate  # Alembic: only here and in status

        core, created = self.core, []
        admin_name = parse_name(admin_name)
        core.keys.check()
        with core.database_errors():
            if migrate.upgrade(core.engine):
                created.append(f"schema {migrate.head_revision()}")
        created += [f"HSM key {label}" for label in core.keys.ensure_mac_keys()]
        admin_token = None
        with core.transaction() as session:
            vault_row = session.execute(select(models.Vault)).scalar_one_or_none()
            if vault_row is None:
                vault_row = models.Vault(vault_id=str(uuid.uuid4()), created_at=utcnow())
                session.add(vault_row)
                session.flush()
                created.append(f"vault {vault_row.vault_id}")
                # The chain starts with the vault and only then: a head missing from an
                # existing vault means tampering, which init must not paper over.
                audit_log.start_chains(session, vault_row.vault_id)
            resealed = anchor.reseal_legacy(session.connection(), core.keys,
                                            vault_row.vault_id)
            if resealed:
                created.append(f"anchor seals on {resealed} anchors older than them")
            if session.execute(select(models.Kek.version)).first() is None:
                label = kek_label(self.settings.key_prefix, 1)
                try:
                    core.keys.describe(label)  # already on the token: a restored database
                except KeyMissing:
                    core.keys.create_kek(1)
                    created.append(f"HSM key {label}")
                session.add(models.Kek(version=1, label=label, state=models.KeyState.CURRENT.value,
                                       created_at=utcnow()))
            if ensure_policy(core, session, f"os:{getpass.getuser()}"):
                created.append("critical-path policy (empty)")
            # No active security engineer (first run, or all revoked or expired): this is the
            # audited break-glass path of whoever holds the HSM PIN and the database.
            if active_engineers(core, session) == 0:
                admin_token = add_principal(core, session, admin_name, Role.SECURITY_ENGINEER,
                                            created_by=f"os:{getpass.getuser()}")
                created.append(f"principal {admin_name} (security_engineer)")
                if deliver_token is not None:
                    deliver_token(admin_token)
            if created:
                audit_log.append(session, core.keys, Entry(
                    ts=format_ts(utcnow()), principal=f"os:{getpass.getuser()}", roles="",
                    action="vault.init", path="", version=None, outcome=Outcome.ALLOWED.value,
                    reason="created " + ", ".join(created), request_id=str(uuid.uuid4()),
                    context=_context_json()), vault_row.vault_id)
            return InitResult(vault_id=vault_row.vault_id, created=created,
                              admin_name=admin_name if admin_token else None,
                              admin_token=admin_token)

    def status(self, caller: Caller) -> dict[str, object]:
        """Where the vault is and what it holds (metadata only; any authenticated principal)."""
        from airflow_provider_mlsecrets.store import migrate

        with self.core.operation(caller, "vault.status", None) as op:
            s = op.session

            def count(model: type[models.Base]) -> int:
                return int(s.execute(select(func.count()).select_from(model)).scalar_one())

            current = s.execute(select(models.Kek.label).where(
                models.Kek.state == models.KeyState.CURRENT.value)).scalar_one_or_none()
            return {
                "vault_id": self.core.vault_id(s),
                "database": safe_url(self.settings.db_url),
                "schema": migrate.current_revision(s.connection()),
                "pkcs11_module": self.settings.pkcs11_module,
                "pkcs11_token": self.settings.pkcs11_token,
                "current_kek": current,
                "secrets": count(models.Secret),
                "versions": count(models.SecretVersion),
                "principals": count(models.Principal),
                "audit_records": count(models.AuditRecord),
                "you": f"{op.actor.name} ({op.actor.role.value})",
            }

    def key_list(self, caller: Caller) -> list[KeyView]:
        """Every KEK version with its state, its use and what the HSM says of it."""
        with self.core.operation(caller, "key.list", Capability.LIST) as op:
            uses = dict(op.session.execute(
                select(models.SecretVersion.kek_id, func.count())
                .where(models.SecretVersion.wrapped_key.is_not(None))
                .group_by(models.SecretVersion.kek_id)).tuples().all())
            out = []
            for kek in op.session.scalars(select(models.Kek).order_by(models.Kek.version)):
                sensitive: bool | None = None
                extractable: bool | None = None
                try:
                    info = self.core.keys.describe(kek.label)
                    sensitive, extractable = info.sensitive, info.extractable
                except KeyMissing:
                    pass  # shown as unknown: the token no longer has it
                out.append(KeyView(label=kek.label, version=kek.version, state=kek.state,
                                   created_at=format_ts(kek.created_at),
                                   versions_wrapped=uses.get(kek.label, 0),
                                   sensitive=sensitive, extractable=extractable))
            return out


def _context_json() -> str:
    from airflow_provider_mlsecrets.audit.record import canonical_context

    return canonical_context(process_context("cli"))
