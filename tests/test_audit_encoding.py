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

    def load_data(self, name: str) -> list[bytes]:
        return []

    def store_data(self, name: str, value: bytes) -> None:
        raise NotImplementedError


KEYS = SoftKeys()
HEADS, RECORDS = cast(Table, AuditHead.__table__), cast(Table, AuditRecord.__table__)
ANCHORS = cast(Table, AuditAnchor.__table__)


@pytest.fixture(scope="module")
def engine() -> Iterator[Engine]:
    engine = create_engine("sqlite://")
    Base.metadata.create_all(engine)  # verification reads the MACed rows too (freshness)
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


# -- anchors and high-water marks: docs/formats.md 5.4, under the software key above -----
KA_VAULT = "0b5e7b3e-0000-4000-8000-000000000001"
KA_H1 = bytes.fromhex("fedd79935c298e1831125a9d40a5a0665b6eaf7591daaf2db71f464fcad57430")


def test_the_anchor_seal_is_over_its_own_documented_encoding() -> None:
    from airflow_provider_mlsecrets.audit import anchor

    request = "00000000-0000-4000-8000-0000000000aa"
    assert anchor.body(KA_VAULT, 1, 1, KA_H1, request).hex() == (
        "000000196d6c736563726574732d61756469742d616e63686f722d7631"
        "0000002430623565376233652d303030302d343030302d383030302d303030303030303030303031"
        "000000080000000000000001" "000000080000000000000001"
        "00000020fedd79935c298e1831125a9d40a5a0665b6eaf7591daaf2db71f464fcad57430"
        "0000002430303030303030302d303030302d343030302d383030302d303030303030303030306161")
    seal = anchor.seal(KEYS, KA_VAULT, 1, 1, KA_H1, request)
    assert seal.hex() == "aed6b282c6234f9dd19dfb3a2e2b7d3fbacdf56f017a6ba361e85fe7b17e08e6"
    # a record's seal over the same hash is a different value: it cannot stand in
    assert KEYS.mac(MacKey.AUDIT, KA_H1) != seal
    assert anchor.sealed(KEYS, KA_VAULT, 1, 1, KA_H1, request, seal)
    assert not anchor.sealed(KEYS, KA_VAULT, 1, 1, KA_H1, None, seal)
    assert not anchor.sealed(KEYS, KA_VAULT, 2, 1, KA_H1, request, seal)


def test_the_mark_is_over_its_own_documented_encoding() -> None:
    from airflow_provider_mlsecrets.audit import mark

    at = "2026-01-02T03:04:06.000000Z"
    body = mark.body(KA_VAULT, mark.Mark(chain=1, generation=7, seq=1, hash=KA_H1, at=at))
    assert body.hex() == (
        "000000176d6c736563726574732d61756469742d6d61726b2d7631"
        "0000002430623565376233652d303030302d343030302d383030302d303030303030303030303031"
        "000000080000000000000001" "000000080000000000000007" "000000080000000000000001"
        "00000020fedd79935c298e1831125a9d40a5a0665b6eaf7591daaf2db71f464fcad57430"
        "0000001b323032362d30312d30325430333a30343a30362e3030303030305a")
    assert KEYS.mac(MacKey.AUDIT, body).hex() == (
        "716f329bb4c148e782d63298735231e6512ab2681172f5cddfaa18d27e06ca66")
