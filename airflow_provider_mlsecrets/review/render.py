"""An access review's data as the bodies of its three files: JSON (the data itself,
canonical), HTML that prints well (and carries the data, for ``revoke --from-review``) and
CSV (one table, a ``section`` column telling its rows apart). The signature trailer is
added by :mod:`.seal`. Every text from the vault is escaped for its format; nothing here
can hold a value: the data holds none."""

from __future__ import annotations

import csv
import html
import io
import json
from collections.abc import Iterable, Sequence
from typing import Any

from airflow_provider_mlsecrets.review.seal import canonical_json

CSV_COLUMNS = ("section", "principal", "role", "kind", "status", "target", "action",
               "capabilities", "effect", "created_at", "last_used_at", "uses", "count",
               "first", "last", "detail")
DATA_ID = "mlsecrets-review-data"


def render(kind: str, review: dict[str, Any]) -> bytes:
    if kind == "json":
        return canonical_json(review)
    if kind == "html":
        return to_html(review)
    return to_csv(review)


# -- CSV --------------------------------------------------------------------------------------
def csv_rows(review: dict[str, Any]) -> Iterable[dict[str, Any]]:
    for key in ("review_id", "vault_id", "created_at", "created_by", "window", "since",
                "until"):
        yield {"section": "review", "target": key, "detail": review[key]}
    for p in review["principals"]:
        who = {"principal": p["name"], "role": p["role"], "kind": p["kind"],
               "status": p["status"]}
        yield {"section": "principal", **who, "created_at": p["created_at"],
               "last_used_at": p["last_used_at"], "last": p["last_seen_at"],
               "detail": "no use in the window" if p["idle"] else ""}
        for g in p["grants"]:
            yield {"section": "grant", **who, "target": g["pattern"], "effect": g["effect"],
                   "capabilities": g["capabilities"], "created_at": g["created_at"],
                   "last_used_at": g["last_used_at"], "uses": g["uses"],
                   "detail": "unused for the window" if g["flagged"] else ""}
        for a in p["access"]:
            for target in ([f"every secret ({a['count']})"] if a["every"] else a["paths"]):
                yield {"section": "access", **who, "capabilities": a["capabilities"],
                       "target": target}
    for g in review["unused_grants"]:
        yield {"section": "unused_grant", "principal": g["principal"], "role": g["role"],
               "target": g["pattern"], "capabilities": g["capabilities"], "effect": "allow",
               "created_at": g["created_at"]}
    for name in review["idle_principals"]:
        yield {"section": "idle_principal", "principal": name}
    for r in review["rotations"]:
        yield {"section": "rotation", "target": r["path"], "detail": r["state"],
               "last": r["next_due_at"], "count": r["failures"],
               "effect": r["schedule"], "action": r["last_error"] or ""}
    for r in review["plaintext_reads"]:
        yield {"section": "plaintext_read", "principal": r["principal"], "target": r["path"],
               "action": "secret.read", "last": r["ts"], "uses": r["version"],
               "detail": r["caller"]}
    last = review.get("last_verification")
    if last is not None:
        yield {"section": "verification", "principal": last["principal"],
               "action": "audit.verify", "last": last["ts"],
               "detail": ("ok" if last["ok"] else "FAILED") + f": {last['reason']}"}
    for d in review["denials"]:
        yield {"section": "denial", "principal": d["principal"], "target": d["path"],
               "action": d["action"], "count": d["count"], "first": d["first"],
               "last": d["last"], "detail": d["reason"]}


def to_csv(review: dict[str, Any]) -> bytes:
    out = io.StringIO(newline="")
    writer = csv.DictWriter(out, CSV_COLUMNS, lineterminator="\r\n")
    writer.writeheader()
    for row in csv_rows(review):
        writer.writerow({k: _cell(row.get(k)) for k in CSV_COLUMNS})
    return out.getvalue().encode("utf-8")


def _cell(value: Any) -> str:
    if value is None:
        return ""
    text = str(value)
    # a spreadsheet runs a cell that starts like a formula: never let one
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def unused_from_csv(body: bytes) -> list[dict[str, Any]]:
    rows = csv.DictReader(io.StringIO(body.decode("utf-8"), newline=""))
    return [{"principal": r["principal"], "role": r["role"], "pattern": r["target"],
             "capabilities": r["capabilities"], "created_at": r["created_at"]}
            for r in rows if r.get("section") == "unused_grant"]


# -- HTML -------------------------------------------------------------------------------------
STYLE = """
:root { color-scheme: light; }
body { font: 10pt/1.4 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 2em;
       color: #1b1f24; }
h1 { font-size: 16pt; margin: 0 0 .2em; } h2 { font-size: 12pt; margin: 1.6em 0 .4em;
     border-bottom: 1px solid #888; } h3 { font-size: 10.5pt; margin: 1em 0 .3em; }
table { border-collapse: collapse; width: 100%; margin: .3em 0 1em; }
th, td { border: 1px solid #bbb; padding: 2px 5px; text-align: left; vertical-align: top;
         word-break: break-word; }
th { background: #eef0f3; } thead { display: table-header-group; }
tr { page-break-inside: avoid; break-inside: avoid; }
.meta td:first-child { width: 12em; font-weight: 600; }
.flag { color: #a0001c; font-weight: 600; } .muted { color: #666; }
.principal { page-break-inside: avoid; break-inside: avoid-page; }
code, pre { font: 9pt ui-monospace, Menlo, Consolas, monospace; }
pre { white-space: pre-wrap; word-break: break-all; background: #f6f8fa; padding: .5em; }
footer { margin-top: 2em; border-top: 1px solid #888; }
@page { size: A4; margin: 14mm 12mm; }
@media print { body { margin: 0; } h2 { page-break-after: avoid; break-after: avoid; } }
"""


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value))


def _table(headers: Sequence[str], rows: Iterable[Sequence[Any]], empty: str,
           flag: int | None = None) -> str:
    rows = list(rows)
    if not rows:
        return f'<p class="muted">{_e(empty)}</p>'
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(
        f'<td class="flag">{_e(c)}</td>' if i == flag and c else f"<td>{_e(c)}</td>"
        for i, c in enumerate(row)) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _verified(last: dict[str, Any] | None) -> str:
    if last is None:
        return ('<p class="flag">The audit trail was never verified before this review: run '
                "<code>mlsecrets audit verify</code>.</p>")
    result = "passed" if last["ok"] else "FAILED"
    return (f'<p{"" if last["ok"] else " class=flag"}>The audit trail was last verified at '
            f"{_e(last['ts'])} by {_e(last['principal'])}: {result}.</p>")


def to_html(review: dict[str, Any]) -> bytes:
    r = review
    parts = [
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">",
        f"<title>Access review {_e(r['review_id'])}</title><style>{STYLE}</style></head><body>",
        f"<h1>Access review</h1><p class=\"muted\">mlsecrets vault {_e(r['vault_id'])}</p>",
        "<table class=\"meta\"><tbody>" + "".join(
            f"<tr><td>{_e(label)}</td><td>{_e(r[key])}</td></tr>" for label, key in (
                ("Review", "review_id"), ("Made by", "created_by"), ("Made at", "created_at"),
                ("Window", "window"), ("From", "since"), ("To", "until"))) + "</tbody></table>",
        "<h2>Summary</h2>" + _verified(r.get("last_verification")) + _table(("", "count"), [
            ("principals", len(r["principals"])),
            ("grants unused for the window", len(r["unused_grants"])),
            ("principals with no use in the window", len(r["idle_principals"])),
            ("secrets whose rotation needs attention", len(r["rotations"])),
            ("reads of plaintext by people", len(r["plaintext_reads"])),
            ("denials (distinct)", len(r["denials"]))], ""),
        "<h2>Grants unused for the window</h2>"
        "<p>Allow grants that existed for the whole window and decided nothing in it. "
        "<code>mlsecrets revoke --from-review FILE --unused</code> revokes them.</p>",
        _table(("principal", "role", "pattern", "capabilities", "granted"),
               ((g["principal"], g["role"], g["pattern"], g["capabilities"], g["created_at"])
                for g in r["unused_grants"]), "none"),
        "<h2>Principals with no use in the window</h2>",
        _table(("principal",), ((n,) for n in r["idle_principals"]), "none"),
        "<h2>Secrets whose rotation needs attention</h2>",
        _table(("path", "state", "due", "schedule", "failures", "last error"),
               ((x["path"], x["state"], x["next_due_at"], x["schedule"], x["failures"],
                 x["last_error"]) for x in r["rotations"]), "none", flag=1),
        "<h2>Reads of plaintext by people</h2>",
        _table(("time", "principal", "path", "version", "from"),
               ((x["ts"], x["principal"], x["path"], x["version"], x["caller"])
                for x in r["plaintext_reads"]), "none"),
        "<h2>Denials</h2>",
        _table(("principal", "action", "path", "reason", "count", "first", "last"),
               ((d["principal"], d["action"], d["path"], d["reason"], d["count"], d["first"],
                 d["last"]) for d in r["denials"]), "none"),
        "<h2>Every principal's effective access</h2>",
    ]
    for p in r["principals"]:
        parts.append(
            f"<section class=\"principal\"><h3>{_e(p['name'])} <span class=\"muted\">"
            f"({_e(p['role'])}, {_e(p['kind'])}, {_e(p['status'])})</span></h3>"
            f"<p class=\"muted\">created {_e(p['created_at'])}; last seen "
            f"{_e(p['last_seen_at'] or 'never')}; last allowed use in the window "
            f"{_e(p['last_used_at'] or 'none')}</p>")
        parts.append(_table(
            ("effect", "pattern", "capabilities", "granted", "last use in the window", "uses",
             ""), ((g["effect"], g["pattern"], g["capabilities"], g["created_at"],
                    g["last_used_at"], g["uses"], "unused" if g["flagged"] else "")
                   for g in p["grants"]), "no grants (its role alone)", flag=6))
        parts.append(_table(("capabilities", "secrets"), (
            (a["capabilities"], f"every secret ({a['count']})" if a["every"]
             else ", ".join(a["paths"])) for a in p["access"]), "reaches no secret"))
        parts.append("</section>")
    data = json.dumps(review, sort_keys=True, ensure_ascii=True).replace("<", "\\u003c")
    parts.append(f'<script type="application/json" id="{DATA_ID}">{data}</script>')
    return "".join(parts).encode("utf-8")


def data_from_html(body: bytes) -> dict[str, Any]:
    text = body.decode("utf-8")
    start = text.index(f'<script type="application/json" id="{DATA_ID}">')
    start = text.index(">", start) + 1
    end = text.index("</script>", start)
    found: dict[str, Any] = json.loads(text[start:end])
    return found
