"""Frozen settings of the proxy's listeners, upstream and limits."""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import urlsplit

from inferos.errors import ConfigError
from inferos.proxy.connection_limits import ConnectionSettings

DEFAULT_LISTEN = "127.0.0.1:8020"
DEFAULT_ADMIN = "127.0.0.1:8021"
# Lemonade's own idle limit for a generation; long prefills must not be cut shorter.
DEFAULT_IDLE_TIMEOUT_S = 600.0
DEFAULT_CONNECT_TIMEOUT_S = 10.0
DEFAULT_MAX_BODY_BYTES = 64 * 1024 * 1024
# Observation keeps at most this many response bytes per request to parse afterwards.
DEFAULT_OBSERVE_MAX_BYTES = 8 * 1024 * 1024
# Lemonade's admin routes (shutdown, set, ...): not for the proxy's clients (deny_paths.py).
DEFAULT_DENY_PATHS: tuple[str, ...] = ("/internal/*",)


@dataclass(frozen=True, slots=True)
class HostPort:
    host: str
    port: int

    @classmethod
    def parse(cls, text: str, *, key: str = "listen") -> HostPort:
        host, sep, port = text.rpartition(":")
        if not sep or not port.isdigit():
            raise ConfigError(f"expected HOST:PORT, got {text!r}", key=key)
        number = int(port)
        if not 0 <= number <= 65535:
            raise ConfigError(f"port out of range in {text!r}", key=key)
        return cls(host.strip("[]") or "127.0.0.1", number)

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


def normalize_upstream(url: str, *, key: str = "upstream") -> str:
    """An upstream is an origin (scheme://host:port), optionally with a path prefix."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(f"expected an http(s) URL such as http://127.0.0.1:13305, got {url!r}",
                          key=key)
    return f"{parts.scheme}://{parts.netloc}{parts.path.rstrip('/')}"


@dataclass(frozen=True, slots=True)
class ProxySettings:
    upstream: str
    listen: HostPort = HostPort.parse(DEFAULT_LISTEN)
    admin: HostPort = HostPort.parse(DEFAULT_ADMIN)
    passthrough: bool = False
    connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S
    idle_timeout_s: float | None = DEFAULT_IDLE_TIMEOUT_S
    total_timeout_s: float | None = None  # none by default: generations may be long
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    observe_max_bytes: int = DEFAULT_OBSERVE_MAX_BYTES
    # Host names answered besides loopback and the listener's own ("*": any); host_guard.py.
    allowed_hosts: tuple[str, ...] = ()
    deny_paths: tuple[str, ...] = DEFAULT_DENY_PATHS
    # Header timeout, idle keep-alive bound and connection cap of both listeners.
    connections: ConnectionSettings = ConnectionSettings()
    # The key of a backend Infer-OS runs itself (the embedded engine child): sent as its
    # Authorization instead of the client's. None for a backend the user runs.
    upstream_api_key: str | None = field(default=None, repr=False)
