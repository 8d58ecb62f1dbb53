"""An access review's signature: what the HSM MAC covers, and how a file carries it
(docs/formats.md, "Access review").

A review is rendered once, when it is made, as JSON, HTML and CSV. The MAC covers the
SHA-256 of each rendering's body together with who made it, when, and over which window,
in its own domain-separated encoding::

    mac = HMAC-SHA256(K_audit, canonical.encode("mlsecrets-review-v1", vault_id, review_id,
                      created_at, created_by, window, since, until,
                      sha256(json body), sha256(html body), sha256(csv body)))

so no record seal (an HMAC over a bare 32-byte hash), anchor or mark can stand in for it,
and a MAC of one review says nothing about another. The review's ``review.create`` audit
record (its request id is the review id) names the same three digests.

A file is its body followed by a trailer holding the signature (JSON: the ``signature`` key
beside ``review``, whose canonical form is the body). A verifier renders the trailer again
from the signature it parsed and requires the file to end with exactly that, so nothing can
hide in or after it.
"""

from __future__ import annotations

import hashlib
import html
import json
from dataclasses import asdict, dataclass
from typing import Any

from airflow_provider_mlsecrets import canonical
from airflow_provider_mlsecrets.errors import IntegrityError, InvalidInput
from airflow_provider_mlsecrets.keys import KeyProvider, MacKey

REVIEW_TAG = "mlsecrets-review-v1"
FORMATS = ("json", "html", "csv")
HTML_MARK = '<footer class="mlsecrets-signature">'
CSV_MARK = "#mlsecrets-review-signature"
MAX_FILE = 256 * 1024 * 1024


@dataclass(frozen=True)
class Signature:
    """Who made a review, when, over what, and the MAC over it and its renderings."""

    format: str  # REVIEW_TAG
    vault_id: str
    review_id: str  # the request id of its review.create record
    created_at: str  # as audit records write time
    created_by: str  # the principal
    window: str  # as asked (90d)
    since: str
    until: str
    sha256: dict[str, str]  # format -> hex digest of that rendering's body
    mac: str  # hex
    chain: int | None = None  # where its audit record is (written after it committed)
    seq: int | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> Signature:
        try:
            data = json.loads(text)
            signature = cls(**data)
        except (ValueError, TypeError, RecursionError):
            raise IntegrityError("the review's signature is unreadable") from None
        if signature.format != REVIEW_TAG or not isinstance(signature.sha256, dict) \
                or set(signature.sha256) != set(FORMATS):
            raise IntegrityError("the review's signature is not an mlsecrets-review-v1 one")
        return signature


def body(vault_id: str, review_id: str, created_at: str, created_by: str, window: str,
         since: str, until: str, digests: dict[str, str]) -> bytes:
    """What the MAC covers."""
    return canonical.encode(REVIEW_TAG, vault_id, review_id, created_at, created_by, window,
                            since, until, *(bytes.fromhex(digests[f]) for f in FORMATS))


def mac(keys: KeyProvider, vault_id: str, review_id: str, created_at: str, created_by: str,
        window: str, since: str, until: str, digests: dict[str, str]) -> bytes:
    return keys.mac(MacKey.AUDIT, body(vault_id, review_id, created_at, created_by, window,
                                       since, until, digests))


def mac_of(keys: KeyProvider, signature: Signature) -> bytes:
    try:
        return mac(keys, signature.vault_id, signature.review_id, signature.created_at,
                   signature.created_by, signature.window, signature.since, signature.until,
                   signature.sha256)
    except (ValueError, TypeError, AttributeError):
        raise IntegrityError("the review's signature is unreadable") from None


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def canonical_json(review: Any) -> bytes:
    """The JSON body: the review's data, sorted keys, no spaces, UTF-8."""
    return json.dumps(review, sort_keys=True, separators=(",", ":"),
                      ensure_ascii=False).encode("utf-8")


# -- files ------------------------------------------------------------------------------------
def html_trailer(signature: Signature) -> bytes:
    shown = json.dumps(json.loads(signature.to_json()), indent=2, sort_keys=True)
    return (f"{HTML_MARK}<h2>Signature</h2><p>Check this report with <code>mlsecrets review "
            f"verify FILE</code>: it proves the report unaltered, who made it and when, and "
            f"finds its audit record.</p><pre>{html.escape(shown, quote=False)}</pre></footer>"
            "</body></html>\n").encode()


def csv_trailer(signature: Signature) -> bytes:
    text = signature.to_json().replace('"', '""')
    return f'{CSV_MARK},"{text}"\r\n'.encode()


def json_file(review: Any, signature: Signature) -> bytes:
    return (json.dumps({"format": REVIEW_TAG, "review": review,
                        "signature": json.loads(signature.to_json())},
                       indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")


def assemble(kind: str, rendered: bytes, review: Any, signature: Signature) -> bytes:
    if kind == "json":
        return json_file(review, signature)
    return rendered + (html_trailer(signature) if kind == "html" else csv_trailer(signature))


@dataclass(frozen=True)
class Parsed:
    kind: str
    body: bytes  # what the kind's digest covers
    signature: Signature
    review: Any  # the data, for JSON; None otherwise (read it with review.data)


def parse(content: bytes) -> Parsed:
    """Split a review file into its body and signature, or raise :class:`IntegrityError`
    (the file is not one this vault wrote, or it was changed)."""
    if len(content) > MAX_FILE:
        raise InvalidInput("that file is too large to be a review")
    head = content.lstrip()[:64].lower()
    if head.startswith(b"{"):
        return _parse_json(content)
    if head.startswith(b"<!doctype html"):
        return _split(content, "html", HTML_MARK.encode(), _html_signature, html_trailer)
    if head.startswith(b"section,"):
        return _split(content, "csv", b"\r\n" + CSV_MARK.encode() + b",", _csv_signature,
                      csv_trailer, keep=2)
    raise IntegrityError("this is not an mlsecrets access review (JSON, HTML or CSV)")


def _parse_json(content: bytes) -> Parsed:
    try:
        document = json.loads(content)
    except (ValueError, RecursionError):
        raise IntegrityError("the review file is not valid JSON") from None
    if not isinstance(document, dict) or set(document) != {"format", "review", "signature"} \
            or document["format"] != REVIEW_TAG or not isinstance(document["signature"], dict):
        raise IntegrityError("the review file does not hold a review and its signature only")
    signature = Signature.from_json(json.dumps(document["signature"]))
    return Parsed("json", canonical_json(document["review"]), signature, document["review"])


def _split(content: bytes, kind: str, mark: bytes, read: Any, trailer: Any, keep: int = 0
           ) -> Parsed:
    at = content.rfind(mark)
    if at < 0:
        raise IntegrityError(f"the {kind.upper()} review carries no signature")
    cut = at + keep
    signature = read(content[cut:])
    if content[cut:] != trailer(signature):
        raise IntegrityError(f"the {kind.upper()} review's signature block was changed")
    return Parsed(kind, content[:cut], signature, None)


def _html_signature(tail: bytes) -> Signature:
    try:
        text = tail.decode("utf-8")
        start, end = text.index("<pre>") + 5, text.rindex("</pre>")
    except (UnicodeDecodeError, ValueError):
        raise IntegrityError("the HTML review's signature is unreadable") from None
    return Signature.from_json(html.unescape(text[start:end]))


def _csv_signature(tail: bytes) -> Signature:
    import csv
    import io

    try:
        rows = list(csv.reader(io.StringIO(tail.decode("utf-8"), newline="")))
    except (UnicodeDecodeError, csv.Error):
        raise IntegrityError("the CSV review's signature is unreadable") from None
    if len(rows) != 1 or len(rows[0]) != 2 or rows[0][0] != CSV_MARK:
        raise IntegrityError("the CSV review's signature row is malformed")
    return Signature.from_json(rows[0][1])
