"""The verifier hashes records with an inline encoder (audit/verify.py); it must agree with
the reference one (audit/record.py) byte for byte, on the known answer of docs/formats.md
section 5.2 and on any text, type or size. No HSM: seals use a software HMAC key."""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
from collections.abc import Iterator
from typing import Any, cast

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, Table, create_engine, delete, insert

from airflow_provider_mlsecrets.audit.log import CHAINS
from airflow_provider_mlsecrets.audit.record import Entry, genesis, next_hash
from airflow_provider_mlsecrets.audit.verify import verify
from airflow_provider_mlsecrets.keys import KekId, KeyInfo, KeyProvider, MacKey
from airflow_provider_mlsecrets.store.models import AuditAnchor, AuditHead, AuditRecord, Base

VAULT = "0b5e7b3e-0000-4000-8000-000000000001"
H0 = "a0ef52b79767d0f7c0fadde25a3e848c4129a90888ee3d2453423678489d64b1"
H1 = "fedd79935c298e1831125a9d40a5a0665b6eaf7591daaf2db71f464fcad57430"
R1 = Entry(ts="2026-01-02T03:04:05.000006Z", principal="admin", roles="security_engineer",
           action="secret.read", path="ml/openai/api_key", version=3, outcome="allowed",
           reason="role security_engineer", request_id="00000000-0000-4000-8000-000000000000",
           context='{"component":"cli","host":"h","pid":42}')


class SoftKeys(KeyProvider):
    def mac(self, key: MacKey, data: bytes) -> bytes:
        return hmac.new(b"\x42" * 32, data, hashlib.sha256).digest()

    def wrap(self, kek: KekId, data_key: bytes, associated_data: bytes) -> bytes:
        raise NotImplementedError

    def unwrap(self, kek: KekId, wrapped: bytes, associated_data: bytes) -> bytes:
        raise NotImplementedError

    def create_kek(self, version: int) -> KekId:
        raise NotImplementedError

    def ensure_mac_keys(self) -> list[str]:
        raise NotImplementedError

    def describe(self, label: str) -> KeyInfo:
        raise NotImplementedError

    def check(self) -> None:
        raise NotImplementedError


KEYS = SoftKeys()
HEADS, RECORDS = cast(Table, AuditHead.__table__), cast(Table, AuditRecord.__table__)
ANCHORS = cast(Table, AuditAnchor.__table__)


@pytest.fixture(scope="module")
def engine() -> Iterator[Engine]:
    engine = create_engine("sqlite://")
    Base.metadata.create_all(engine, tables=[HEADS, RECORDS, ANCHORS])
    yield engine
    engine.dispose()


def write(engine: Engine, rows: list[dict[str, Any]]) -> None:
    """Replace the trail with ``rows`` (column values as stored), chained and sealed with
    the reference encoder."""
    previous, records = genesis(VAULT, 1), []
    for seq, row in enumerate(rows, 1):
        previous = next_hash(previous, 1, seq, Entry(**row))
        records.append({**row, "chain": 1, "seq": seq, "hash": previous,
                        "seal": KEYS.mac(MacKey.AUDIT, previous)})
    with engine.begin() as c:
        c.execute(delete(AuditRecord))
        c.execute(delete(AuditHead))
        c.execute(insert(AuditHead), [{"chain": 1, "seq": len(rows), "hash": previous}] + [
            {"chain": n, "seq": 0, "hash": genesis(VAULT, n)} for n in range(2, CHAINS + 1)])
        if records:
            c.execute(insert(AuditRecord), records)


def check(engine: Engine, **kwargs: Any) -> Any:
    with engine.connect() as c:
        return verify(c, KEYS, VAULT, **kwargs)


def test_the_documented_known_answer(engine: Engine) -> None:
    assert genesis(VAULT, 1).hex() == H0
    assert next_hash(genesis(VAULT, 1), 1, 1, R1).hex() == H1
    write(engine, [dataclasses.asdict(R1)])
    for all_seals in (False, True):
        report = check(engine, all_seals=all_seals)
        assert report.ok and report.records == 1 and report.seals_checked == 1


TEXT = st.text(st.characters(exclude_categories=["Cs"]), max_size=40)
ENTRIES = st.builds(Entry, ts=TEXT, principal=TEXT, roles=TEXT, action=TEXT, path=TEXT,
                    version=st.none() | st.integers(0, 2**31), outcome=TEXT, reason=TEXT,
                    request_id=TEXT, context=TEXT)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow,
          HealthCheck.function_scoped_fixture])
@given(entries=st.lists(ENTRIES, min_size=1, max_size=6))
def test_any_text_hashes_as_the_reference_does(engine: Engine, entries: list[Entry]) -> None:
    write(engine, [dataclasses.asdict(e) for e in entries])
    report = check(engine, all_seals=True)
    assert report.ok, report.problems
    assert report.records == len(entries)


def test_odd_values_and_long_fields_take_the_reference_encoder(engine: Engine) -> None:
    # what SQLite can hold besides text: a BLOB in a text column, text in the version column
    base = dataclasses.asdict(R1)
    write(engine, [base, {**base, "principal": b"raw \xff bytes"}, {**base, "version": "v3"},
                   {**base, "ts": "t" * 5000, "request_id": "\u00e9" * 600},
                   {**base, "version": None, "context": "{}"}, base])
    report = check(engine, all_seals=True)
    assert report.ok and report.records == 6


@pytest.mark.parametrize("column", ["ts", "principal", "roles", "action", "path", "version",
                                    "outcome", "reason", "request_id", "context"])
def test_a_change_to_any_field_is_named(engine: Engine, column: str) -> None:
    rows = [dataclasses.asdict(R1) for _ in range(4)]
    write(engine, rows)
    changed = "9" if column == "version" else "x"
    with engine.begin() as c:
        c.execute(RECORDS.update().where(AuditRecord.seq == 3)
                  .values({column: changed}))
    report = check(engine)
    assert not report.ok and report.first_bad == (1, 3) and report.records == 2


def test_progress_every_thousand_records(engine: Engine) -> None:
    write(engine, [{**dataclasses.asdict(R1), "path": f"ml/{i}"} for i in range(2500)])
    steps: list[int] = []
    report = check(engine, progress=steps.append)
    assert report.ok and report.records == 2500 and steps == [1000, 1000]
