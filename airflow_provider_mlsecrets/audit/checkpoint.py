"""Checkpoints: the (seq, hash, seal) of each chain's newest record, exported to a file kept
away from the database, so a later verification can prove the tail was not cut off.

File format (JSON)::

    {"format": "mlsecrets-audit-checkpoint-v1", "vault_id": "…", "created_at": "…Z",
     "chains": [{"chain": 1, "seq": 42, "hash": "<hex>", "seal": "<hex>"}]}
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from airflow_provider_mlsecrets.errors import InvalidInput

FORMAT = "mlsecrets-audit-checkpoint-v1"


@dataclass(frozen=True)
class ChainPoint:
    chain: int
    seq: int
    hash: bytes
    seal: bytes


@dataclass(frozen=True)
class Checkpoint:
    vault_id: str
    created_at: str
    chains: tuple[ChainPoint, ...]

    def to_json(self) -> str:
        return json.dumps({
            "format": FORMAT, "vault_id": self.vault_id, "created_at": self.created_at,
            "chains": [{"chain": c.chain, "seq": c.seq, "hash": c.hash.hex(), "seal": c.seal.hex()}
                       for c in self.chains],
        }, indent=2) + "\n"

    @classmethod
    def read(cls, path: Path) -> Checkpoint:
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise InvalidInput(f"cannot read checkpoint {path}: {exc.strerror}") from None
        return cls.from_json(text, str(path))

    @classmethod
    def from_json(cls, text: str, source: str = "the checkpoint") -> Checkpoint:
        try:
            data = json.loads(text)
            if data.get("format") != FORMAT:
                raise ValueError(f"format is not {FORMAT}")
            chains = tuple(
                ChainPoint(chain=int(c["chain"]), seq=int(c["seq"]),
                           hash=bytes.fromhex(c["hash"]), seal=bytes.fromhex(c["seal"]))
                for c in data["chains"]
            )
            return cls(vault_id=str(data["vault_id"]), created_at=str(data["created_at"]),
                       chains=chains)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise InvalidInput(f"{source} is not an audit checkpoint: {exc}") from None
