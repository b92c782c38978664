"""Which ``Host`` a listener answers: this machine's names, and the ones the user allows.

Loopback is not a trust boundary against a browser. A page at ``http://evil.example:8020``
whose DNS name the attacker then re-points at 127.0.0.1 (DNS rebinding) reaches our
listener as same-origin, so the browser lets it read the answers; but its requests still
say ``Host: evil.example:8020``, the name the page used. A listener that answers only the
names of this machine is therefore out of that page's reach:

- loopback names and addresses: ``localhost``, ``127.0.0.0/8``, ``::1`` (also IPv4-mapped);
- the host the listener was told to bind (``listen.proxy``, ``listen.admin``), unless that
  is a wildcard (``0.0.0.0``, ``::``), which is no name a client can send;
- the names of ``listen.allowed_hosts`` (``*``: any Host, for a listener behind a reverse
  proxy that checks names itself).

The port is not compared: rebinding keeps the page's port, so the name is what tells. A
request with no ``Host`` at all is allowed (every browser sends one; HTTP/1.0 tools may
not). The check is one dictionary lookup per request once a Host has been seen.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field

from aiohttp import web

from inferos.proxy.errors import openai_error

__all__ = ["ANY", "LOOPBACK_NAMES", "HostAllowList", "forbidden_host", "host_name",
           "is_loopback"]

ANY = "*"
LOOPBACK_NAMES = frozenset({"localhost", "localhost."})
WILDCARD_BINDS = frozenset({"", "0.0.0.0", "::"})
# Distinct Host values remembered per listener; past it, each is parsed again (a client
# sending random Hosts costs a parse, never memory).
_CACHE_MAX = 1024


def host_name(header: str) -> str:
    """The name of a ``Host`` header (or an origin's netloc) without its port, lowercased:
    ``[::1]:8021`` -> ``::1``, ``LocalHost:80`` -> ``localhost``; ``""`` when malformed."""
    host = header.strip().lower()
    if host.startswith("["):
        end = host.find("]")
        return host[1:end] if end > 0 else ""
    if host.count(":") == 1:
        host = host.rsplit(":", 1)[0]
    return host


def is_loopback(name: str) -> bool:
    """True for ``localhost`` and any loopback address (IPv4-mapped IPv6 included)."""
    if name in LOOPBACK_NAMES:
        return True
    try:
        ip = ipaddress.ip_address(name)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped.is_loopback
    return ip.is_loopback


@dataclass(frozen=True, slots=True)
class HostAllowList:
    """The Host names one listener answers (module docstring)."""

    names: frozenset[str] = frozenset()
    any_host: bool = False
    _seen: dict[str, bool] = field(default_factory=dict, init=False, compare=False,
                                   repr=False)

    @classmethod
    def for_listener(cls, bind_host: str, allowed: Iterable[str] = ()) -> HostAllowList:
        names = {host_name(name) for name in allowed if name != ANY}
        bind = host_name(bind_host) if bind_host.startswith("[") else bind_host.lower()
        if bind not in WILDCARD_BINDS:
            names.add(bind)
        return cls(frozenset(names - {""}), any_host=ANY in allowed)

    def allows_name(self, name: str) -> bool:
        return self.any_host or name in self.names or is_loopback(name)

    def allows(self, header: str | None) -> bool:
        """Whether a request with this ``Host`` header (None: absent) may be answered."""
        if header is None or self.any_host:
            return True
        known = self._seen.get(header)
        if known is None:
            name = host_name(header)
            known = bool(name) and self.allows_name(name)
            if len(self._seen) < _CACHE_MAX:
                self._seen[header] = known
        return known


def forbidden_host(header: str, setting: str = "listen.allowed_hosts") -> web.Response:
    """403 in OpenAI's shape; the name is echoed cut short (a client chose it)."""
    shown = header[:80]
    return openai_error(
        403, "permission_error",
        f"Host {shown!r} is not a name of this machine (DNS rebinding defence); allow it "
        f"with {setting} if clients really use it.", code="forbidden_host")
