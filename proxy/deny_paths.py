"""``proxy.deny_paths``: request paths the proxy refuses instead of forwarding.

Lemonade serves its admin routes (``/internal/shutdown``, ``/internal/set``, ...) on the
same port as the model API, with no key of their own; a client of the proxy (or a page that
reached it) must not be able to stop or reconfigure the backend behind the controller's
back. So by default ``/internal/*`` is refused with 403 (code ``path_denied``).

A pattern is a path where ``*`` matches any run of characters, ``/`` included; a trailing
``/*`` also matches the folder itself (``/internal/*`` denies ``/internal``). Every pattern
holds under each of Lemonade's API prefixes (``/api/v0``, ``/api/v1``, ``/v0``, ``/v1``) as
well as bare, since Lemonade serves every route under each. Matching is case-insensitive
and done on the path as the backend will read it: percent-decoded, ``\\`` as ``/``,
repeated slashes and dot segments folded, so ``/api/v1//./%69nternal/../internal/set`` is
denied like ``/internal/set``. Folding more than the backend does can only deny more.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import unquote

from aiohttp import web

from inferos.proxy.errors import openai_error
from inferos.proxy.routes import PREFIXES
from inferos.proxy.settings import DEFAULT_DENY_PATHS

__all__ = ["DEFAULT_DENY_PATHS", "PathDenyList", "canonical_path", "path_denied"]
_API_PREFIXES = tuple(prefix.rstrip("/") for prefix in PREFIXES)
# Decoding stops after this many rounds: %25 nested deeper is no path a server routes.
_DECODE_ROUNDS = 3


def canonical_path(raw_path: str) -> str:
    """The path of a raw request target as a backend would route it (module docstring)."""
    path = raw_path.split("?", 1)[0].split("#", 1)[0]
    for _ in range(_DECODE_ROUNDS):
        decoded = unquote(path)
        if decoded == path:
            break
        path = decoded
    path = posixpath.normpath("/" + path.replace("\\", "/"))
    # normpath keeps a leading "//" (POSIX allows it a meaning); routes do not.
    return "/" + path.lstrip("/").lower()


def _pattern_regex(pattern: str) -> str:
    pattern = pattern.lower()
    folder = pattern.endswith("/*")
    if folder:
        pattern = pattern[:-2]
    body = ".*".join(re.escape(part) for part in pattern.split("*"))
    return body + ("(?:/.*)?" if folder else "")


@dataclass(frozen=True, slots=True)
class PathDenyList:
    patterns: tuple[str, ...]
    _regex: re.Pattern[str] | None

    @classmethod
    def of(cls, patterns: Iterable[str]) -> PathDenyList:
        kept = tuple(p for p in patterns if p)
        if not kept:
            return cls((), None)
        prefixes = "|".join(re.escape(p) for p in _API_PREFIXES)
        alternatives = "|".join(_pattern_regex(p) for p in kept)
        return cls(kept, re.compile(f"(?:(?:{prefixes})(?=/))?(?:{alternatives})",
                                    re.DOTALL))

    def denies(self, raw_path: str) -> bool:
        if self._regex is None:
            return False
        return self._regex.fullmatch(canonical_path(raw_path)) is not None


def path_denied(path: str) -> web.Response:
    """403 in OpenAI's shape; the path is echoed cut short (a client chose it)."""
    return openai_error(
        403, "permission_error",
        f"The proxy does not forward {path[:120]!r}: it matches proxy.deny_paths "
        "(the backend's admin routes are not for clients).", code="path_denied")
