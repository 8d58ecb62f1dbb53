"""``mlsecrets review``: make an access review, and ``review verify`` one. Revoking what a
review flags is ``mlsecrets revoke --from-review FILE --unused`` (cli/_principals.py)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow_provider_mlsecrets.errors import ConfigurationError, InvalidInput
from airflow_provider_mlsecrets.service import Vault

if TYPE_CHECKING:
    from airflow_provider_mlsecrets.cli.main import Context
    from airflow_provider_mlsecrets.review.service import ReviewCheck

EXTENSIONS = {".json": "json", ".html": "html", ".htm": "html", ".csv": "csv"}
MAX_REVIEW_FILE = 256 * 1024 * 1024


def register(commands: Any, common: argparse.ArgumentParser) -> None:
    review = commands.add_parser(
        "review", parents=[common], help="an HSM-signed access review, recorded in the trail",
        description="Make an access review of the last --since (every principal's effective "
                    "access, each grant's last use, unused grants, idle principals, rotations "
                    "needing attention, reads of plaintext, denials), or verify one.")
    review.add_argument("--since", default="90d", metavar="DURATION",
                        help="the window, ending now (default 90d)")
    review.add_argument("--out", type=Path, action="append", metavar="FILE",
                        help="where to write it: .html (prints well), .csv or .json; give "
                             "--out more than once for several formats of the same review")
    review.add_argument("--force", action="store_true", help="replace FILEs that exist")
    review.set_defaults(handler=_review)
    sub = review.add_subparsers(dest="review_action", metavar="ACTION")
    verify = sub.add_parser("verify", parents=[common],
                            help="prove a review file unaltered, and say who made it, when, "
                                 "and where its audit record is")
    verify.add_argument("file", type=Path, metavar="FILE")
    verify.set_defaults(handler=_verify)


def embedded(ctx: Context, what: str) -> Vault:
    """The vault in this process: a review is signed and checked with the HSM."""
    vault = ctx.vault
    if not isinstance(vault, Vault):
        raise ConfigurationError(
            f"{what} needs the HSM, so it is not available through MLSECRETS_URL: run it where "
            "the vault service runs, or use the console's review button (POST /v1/review)")
    return vault


def read_review(path: Path) -> bytes:
    try:
        if path.stat().st_size > MAX_REVIEW_FILE:
            raise InvalidInput(f"{path} is too large to be a review")
        return path.read_bytes()
    except OSError as exc:
        raise InvalidInput(f"cannot read {path}: {exc.strerror}") from None


def _review(args: argparse.Namespace, ctx: Context) -> None:
    if not args.out:
        raise InvalidInput("give --out FILE (.html, .csv or .json), once per format")
    outs = []
    for path in args.out:
        kind = EXTENSIONS.get(path.suffix.lower())
        if kind is None:
            raise InvalidInput(f"{path}: name the format by the extension: .html, .csv or .json")
        if path.exists() and not args.force:
            raise InvalidInput(f"{path} already exists; give --force to replace it, or another "
                               "file")
        outs.append((path, kind))
    made = embedded(ctx, "a review").insight.review(ctx.caller, window=args.since)
    for path, kind in outs:
        _write(path, made.files[kind])
    r, sig = made.review, made.signature
    where = f"chain {sig.chain}, record {sig.seq}" if sig.seq else "not found yet"
    ctx.output.message(
        f"review {sig.review_id} of the last {r['window']} ({r['since']} to {r['until']}), by "
        f"{sig.created_by}:\n"
        f"  {len(r['principals'])} principals, {len(r['unused_grants'])} grants unused for the "
        f"window, {len(r['idle_principals'])} principals with no use, "
        f"{len(r['rotations'])} rotations needing attention, {len(r['plaintext_reads'])} reads "
        f"of plaintext, {len(r['denials'])} kinds of denial\n"
        f"  written to {', '.join(str(p) for p, _ in outs)}; signed by the HSM; its audit "
        f"record: {where}\n"
        f"  check it later with 'mlsecrets review verify FILE'",
        {"review_id": sig.review_id, "files": {str(p): k for p, k in outs},
         "signature": sig, "counts": {k: len(r[k]) for k in (
             "principals", "unused_grants", "idle_principals", "rotations",
             "plaintext_reads", "denials")}})


def _write(path: Path, data: bytes) -> None:
    """Write a review whole or not at all (a temporary file renamed over ``path``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0),
                     0o640)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise InvalidInput(f"cannot write {path}: {exc.strerror}") from None


def describe(check: ReviewCheck) -> str:
    record = (f"chain {check.chain}, record {check.seq}, written {check.recorded_at}"
              if check.recorded_at else check.note)
    return (f"review {check.review_id} ({check.kind.upper()}) is intact and this vault's:\n"
            f"  made by {check.created_by} at {check.created_at}, over the last {check.window} "
            f"({check.since} to {check.until})\n"
            f"  its audit record: {record}\n"
            f"  it flags {len(check.unused_grants)} grant(s) unused for its window")


def _verify(args: argparse.Namespace, ctx: Context) -> None:
    content = read_review(args.file)
    check = embedded(ctx, "verifying a review").insight.verify_review(ctx.caller, content)
    ctx.output.message(describe(check), {"ok": True, **check.__dict__})
