"""Where a request comes from: the socket's peer, unless that peer is a proxy the operator
listed in ``MLSECRETS_TRUSTED_PROXIES``.

Anyone can send ``X-Forwarded-For`` or ``Forwarded``; believing it from any peer would let
a client pick its own address, dodge the per-address limits and write a false ``client``
into the audit trail. So the headers are read only when the TCP peer is a trusted proxy;
the chain is then walked from the right (the hop the proxy itself added) past further
trusted proxies, and the first other address is the client. From anyone else the header's
value is kept as ``claimed_client``, a claim, never as the ``client``."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
MAX_CLAIM = 256  # characters of a forwarded header kept as a claim
MAX_HOPS = 32  # a longer chain is not walked further


@dataclass(frozen=True)
class Origin:
    """``client`` is the address the limits key on and the audit records; ``proxy`` the
    trusted proxy it came through; ``claimed`` a forwarded address that was not believed."""

    client: str
    proxy: str | None = None
    claimed: str | None = None

    def context(self) -> dict[str, str]:
        out = {"client": self.client}
        if self.proxy is not None:
            out["proxy"] = self.proxy
        if self.claimed is not None:
            out["claimed_client"] = self.claimed
        return out


def networks(proxies: Iterable[str]) -> tuple[Network, ...]:
    """``MLSECRETS_TRUSTED_PROXIES`` as networks (the settings have validated them)."""
    return tuple(ipaddress.ip_network(p, strict=False) for p in proxies)


def origin(scope: Any, trusted: Sequence[Network]) -> Origin:
    """The request's :class:`Origin` (``scope`` is the ASGI scope)."""
    client = scope.get("client")
    peer = str(client[0]) if client else ""
    xff: list[str] = []
    forwarded: list[str] = []
    for name, value in scope.get("headers", []):
        if name == b"x-forwarded-for":
            xff.append(bytes(value).decode("latin-1"))
        elif name == b"forwarded":
            forwarded.append(bytes(value).decode("latin-1"))
    if not xff and not forwarded:
        return Origin(peer)
    raw = "; ".join(x for x in (", ".join(xff), ", ".join(forwarded)) if x)
    if not _within(peer, trusted):
        return Origin(peer, claimed=_claim(raw))
    chains = [c for c in (_xff_hops(xff), _forwarded_hops(forwarded)) if c]
    clients = {_walk(chain, peer, trusted) for chain in chains}
    if len(clients) != 1:  # the two headers disagree: believe neither
        return Origin(peer, claimed=_claim(raw))
    (found,) = clients
    if found is None:  # a hop that is no address ("unknown", "_hidden"): not believed
        return Origin(peer, claimed=_claim(raw))
    return Origin(found, proxy=peer)


def _walk(hops: list[str], peer: str, trusted: Sequence[Network]) -> str | None:
    """The rightmost hop that is not a trusted proxy (the leftmost if all are)."""
    found = peer
    for hop in reversed(hops[-MAX_HOPS:]):
        address = _address(hop)
        if address is None:
            return None
        found = address
        if not _within(address, trusted):
            break
    return found


def _within(address: str, trusted: Sequence[Network]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in trusted)


def _address(hop: str) -> str | None:
    """A hop as a canonical IP address, its port and brackets removed; ``None`` if it is
    not one."""
    hop = hop.strip().strip('"')
    if hop.startswith("["):  # [v6] or [v6]:port
        hop = hop[1:].split("]", 1)[0]
    elif hop.count(":") == 1:  # v4:port
        hop = hop.split(":", 1)[0]
    try:
        return str(ipaddress.ip_address(hop))
    except ValueError:
        return None


def _xff_hops(values: list[str]) -> list[str]:
    return [h for value in values for h in value.split(",") if h.strip()]


def _forwarded_hops(values: list[str]) -> list[str]:
    """The ``for=`` of each element of RFC 7239 ``Forwarded`` headers; an element without
    one is a hop of unknown address."""
    hops = []
    for value in values:
        for element in value.split(","):
            found = "unknown"
            for pair in element.split(";"):
                key, _, val = pair.partition("=")
                if key.strip().lower() == "for":
                    found = val
            if element.strip():
                hops.append(found)
    return hops


def _claim(raw: str) -> str:
    """A forwarded header as a bounded, printable claim for the audit record."""
    return "".join(c if c.isprintable() else "?" for c in raw)[:MAX_CLAIM]
