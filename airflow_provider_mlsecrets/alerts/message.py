"""An alert as a message: a subject, plain text, HTML and JSON, built here by string
concatenation and ``html.escape`` only. No template engine sees a record's fields: a
principal name or a reason can hold ``{{ … }}`` and must arrive as those characters."""

from __future__ import annotations

import html
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

TITLES = {
    "human_read": "plaintext read by a person",
    "denial_burst": "burst of denials",
    "new_dag_secret": "DAG reached a new secret",  # a rule title # nosec B105
    "rotation_failed": "rotation failed",
    "audit_failed": "audit verification failed",
    "audit_overdue": "audit verification overdue",
    "mark_stale": "HSM high-water mark behind",
    "rewrap_pending": "key rotation half done",
    "test": "test alert",
}
MAX_SUBJECT = 200


@dataclass(frozen=True)
class Message:
    """What one alert says. Every field comes from an alert row (never from a value)."""

    alert_id: int | None
    rule: str
    severity: str
    summary: str
    event_ts: str
    raised_at: str
    principal: str = ""
    path: str = ""
    chain: int | None = None
    seq: int | None = None
    request_id: str | None = None
    vault_id: str = ""
    details: Mapping[str, Any] = field(default_factory=dict)

    def subject(self) -> str:
        title = TITLES.get(self.rule, self.rule)
        parts = [f"[mlsecrets {self.severity}] {title}"]
        if self.principal:
            parts.append(f"by {self.principal}")
        if self.path:
            parts.append(f"on {self.path}")
        return _one_line(" ".join(parts))[:MAX_SUBJECT]

    def lines(self) -> list[tuple[str, str]]:
        record = ("-" if self.chain is None else
                  f"chain {self.chain}, record {self.seq}, request {self.request_id or '-'}")
        out = [("Alert", f"{self.alert_id if self.alert_id is not None else '-'} "
                         f"({self.rule}, {self.severity})"),
               ("What", self.summary), ("Who", self.principal or "-"),
               ("When", self.event_ts), ("Path", self.path or "-"),
               ("Audit record", record), ("Vault", self.vault_id or "-"),
               ("Raised", self.raised_at)]
        out += [(f"  {key}", "" if value is None else str(value))
                for key, value in sorted(self.details.items())]
        return [(k, _one_line(v)) for k, v in out]

    def text(self) -> str:
        body = "\n".join(f"{k}: {v}" for k, v in self.lines())
        footer = ("\n\nAcknowledge with: mlsecrets alerts ack "
                  f"{self.alert_id}" if self.alert_id is not None else "")
        return body + footer + "\nThe audit record is the evidence: 'mlsecrets audit tail' " \
                               "or the console's audit view.\n"

    def html(self) -> str:
        rows = "".join(f"<tr><th align=\"left\">{html.escape(k)}</th>"
                       f"<td>{html.escape(v)}</td></tr>" for k, v in self.lines())
        return (f"<p>{html.escape(self.subject())}</p><table>{rows}</table>"
                f"<pre>{html.escape(self.text())}</pre>")

    def json(self) -> dict[str, Any]:
        return {"source": "mlsecrets", "alert_id": self.alert_id, "rule": self.rule,
                "severity": self.severity, "summary": self.summary, "when": self.event_ts,
                "raised_at": self.raised_at, "principal": self.principal, "path": self.path,
                "audit_record": {"chain": self.chain, "seq": self.seq,
                                 "request_id": self.request_id},
                "vault_id": self.vault_id, "details": dict(self.details),
                "subject": self.subject()}

    def part(self, name: str) -> Any:
        return {"subject": self.subject, "text": self.text, "html": self.html,
                "json": self.json}[name]()


def _one_line(text: str) -> str:
    return "".join(ch if ch.isprintable() else " " for ch in text)
