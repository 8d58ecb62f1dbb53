"""Checking a file written by ``mlsecrets audit prune`` on its own.

Such a file is the only copy of the records it holds. Its first line gives, for each
chain, the hash the exported run starts from: the chain's genesis, or an earlier prune's
anchor with that anchor's HSM seal; then one record per line with its hash and seal; its
last line is a checkpoint of where each run ends. A file is whole when each chain's start
is the genesis or a sealed anchor (so no record can be cut from the front), its run
recomputes, record by record, from there to the checkpoint's hash, and the checkpoint's
seals are this vault's (checked in the HSM, so none can be cut from the end).
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from airflow_provider_mlsecrets.audit import anchor
from airflow_provider_mlsecrets.audit.checkpoint import ChainPoint, Checkpoint
from airflow_provider_mlsecrets.audit.record import Entry, genesis, next_hash
from airflow_provider_mlsecrets.keys import KeyProvider, MacKey

EXPORT_FORMAT = "mlsecrets-audit-export-v1"
_FIELDS = ("ts", "principal", "roles", "action", "path", "version", "outcome", "reason",
           "request_id", "context")


@dataclass
class ExportReport:
    records: int = 0
    chains: int = 0
    problems: list[str] = field(default_factory=list)
    points_matched: int = 0  # records of a given checkpoint found, and matching, here

    @property
    def ok(self) -> bool:
        return not self.problems


def check_export(lines: Iterable[str], keys: KeyProvider, vault_id: str, *,
                 checkpoint: Checkpoint | None = None) -> ExportReport:
    """Check the export; with ``checkpoint``, each of its records that falls within the
    export must be there with the checkpoint's hash (as recomputed), and the checkpoint's
    seal must be the HSM's."""
    report = ExportReport()
    wanted = {(p.chain, p.seq): p for p in checkpoint.chains} if checkpoint else {}
    seen: dict[tuple[int, int], bytes] = {}
    try:
        parsed = [json.loads(line) for line in lines if line.strip()]
        header, body, trailer = parsed[0], parsed[1:-1], parsed[-1]
        if header.get("format") != EXPORT_FORMAT or header.get("vault_id") != vault_id:
            report.problems.append(f"not an audit export of vault {vault_id}")
            return report
        points = {int(p["chain"]): p for p in trailer["checkpoint"]["chains"]}
        runs: dict[int, list[dict[str, Any]]] = {}
        for record in body:
            runs.setdefault(int(record["chain"]), []).append(record)
        if set(runs) != set(points) or trailer["records"] != len(body):
            report.problems.append("the export's records and its checkpoint disagree: "
                                   "records were added or removed")
            return report
        for chain, run in sorted(runs.items()):
            report.chains += 1
            start = header["starts"][str(chain)]
            previous, expected = bytes.fromhex(start["hash"]), int(start["after"]) + 1
            if not _start_ok(keys, vault_id, chain, start, previous):
                report.problems.append(
                    f"chain {chain}: the run's start (after record {expected - 1}) is neither "
                    "the chain's genesis nor an anchor sealed by this vault's HSM: records "
                    "were cut from the front of the export")
                continue
            for record in run:
                digest = next_hash(previous, chain, record["seq"],
                                   Entry(*(record[name] for name in _FIELDS)))
                if record["seq"] != expected or digest.hex() != record["hash"]:
                    report.problems.append(f"chain {chain}: record {record['seq']} does not "
                                           "match the chain: it was changed, moved or removed")
                    break
                if (chain, record["seq"]) in wanted:
                    seen[(chain, record["seq"])] = digest
                previous, expected = digest, expected + 1
                report.records += 1
            else:
                point = points[chain]
                if (point["seq"] != expected - 1 or point["hash"] != previous.hex()
                        or not hmac.compare_digest(keys.mac(MacKey.AUDIT, previous),
                                                   bytes.fromhex(point["seal"]))):
                    report.problems.append(f"chain {chain}: the run does not end at its "
                                           "checkpoint, or the checkpoint is not this vault's")
    except (ValueError, KeyError, TypeError, IndexError, AttributeError) as exc:
        report.problems.append(f"not an audit export ({type(exc).__name__})")
    if checkpoint is not None and report.ok:
        _check_points(keys, vault_id, checkpoint, wanted, seen, report)
    return report


def _check_points(keys: KeyProvider, vault_id: str, checkpoint: Checkpoint,
                  wanted: dict[tuple[int, int], ChainPoint], seen: dict[tuple[int, int], bytes],
                  report: ExportReport) -> None:
    if checkpoint.vault_id != vault_id:
        report.problems.append(f"the checkpoint is for vault {checkpoint.vault_id}")
        return
    for key, point in sorted(wanted.items()):
        if key not in seen:
            continue  # not pruned by this export: 'audit verify --checkpoint' checks it
        if not hmac.compare_digest(keys.mac(MacKey.AUDIT, point.hash), point.seal):
            report.problems.append(f"checkpoint for chain {point.chain} at record {point.seq} "
                                   "has a bad seal: it was not made by this vault's HSM")
        elif not hmac.compare_digest(seen[key], point.hash):
            report.problems.append(f"chain {point.chain}: record {point.seq} differs from the "
                                   "checkpoint")
        else:
            report.points_matched += 1


def _start_ok(keys: KeyProvider, vault_id: str, chain: int, start: dict[str, Any],
              digest: bytes) -> bool:
    after = int(start["after"])
    if after == 0:
        return hmac.compare_digest(digest, genesis(vault_id, chain))
    return anchor.sealed(keys, vault_id, chain, after, digest, start.get("prune_request"),
                         bytes.fromhex(start.get("seal", "")))
