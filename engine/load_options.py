"""Which engine options a ``load`` asks for, and whether they are the ones in effect.

A ``load`` names only what it wants to change: an option it leaves out keeps the value in
effect when the same model is loaded, or takes the server's default otherwise. ``ctx_size``
above the model's maximum is clamped to it, so "the same options" compares clamped values:
GAIA's ``ctx_size: 65536`` against an 8192-token model is a no-op the second time.

Every value has an upper bound, checked before anything is loaded (400 ``invalid_value``
naming the field): ``threads`` at most this machine's logical CPUs (more only contend for
the same cores, and a client asking for 10^6 would make ONNX Runtime try to start them),
``ctx_size`` at most ``MAX_CTX_SIZE`` tokens (the policy's ``backend.ctx_size`` bound;
within it, clamped to the model's maximum as above), and the named options at most
``MAX_NAME_CHARS`` characters (they are echoed in errors).
"""

from __future__ import annotations

import os
from dataclasses import replace

import onnxruntime as ort

from inferos.engine.api_errors import invalid_param
from inferos.engine.api_requests import LoadRequest
from inferos.engine.runtime import EngineOptions

# Short names users type, as Lemonade's devices and llama.cpp's backends spell them.
_PROVIDER_ALIASES = {
    "cpu": ("CPUExecutionProvider",),
    "dml": ("DmlExecutionProvider",),
    "directml": ("DmlExecutionProvider",),
    "cuda": ("CUDAExecutionProvider",),
    "gpu": ("DmlExecutionProvider", "CUDAExecutionProvider"),
}


def normalize_provider(name: str, available: list[str] | None = None) -> str:
    """The onnxruntime provider name for ``name`` (``cpu``, ``dml``, ``CUDAExecutionProvider``),
    refused with 400 when this machine's onnxruntime does not offer it."""
    available = ort.get_available_providers() if available is None else available
    for candidate in _PROVIDER_ALIASES.get(name.lower(), (name,)):
        if candidate in available:
            return candidate
    raise invalid_param("provider", f"execution provider '{name}' is not available here; "
                                    f"this onnxruntime offers {', '.join(available)}")


# Upper bounds of a load's values (module docstring).
MAX_CTX_SIZE = 1 << 20
MAX_NAME_CHARS = 64


def max_threads() -> int:
    """The most threads a load may ask for: the logical CPUs of this machine."""
    return os.cpu_count() or 1


def check_bounds(request: LoadRequest) -> None:
    """400 naming the first value of ``request`` past its upper bound."""
    if request.threads is not None and request.threads > max_threads():
        raise invalid_param("threads", f"'threads' must be at most {max_threads()} (this "
                                       f"machine's logical CPUs), got {request.threads}")
    if request.ctx_size is not None and request.ctx_size > MAX_CTX_SIZE:
        raise invalid_param("ctx_size", f"'ctx_size' must be at most {MAX_CTX_SIZE} tokens, "
                                        f"got {request.ctx_size}")
    for name in ("provider", "kv_precision", "graph_optimization"):
        value = getattr(request, name)
        if value is not None and len(value) > MAX_NAME_CHARS:
            raise invalid_param(name, f"'{name}' must be at most {MAX_NAME_CHARS} "
                                      "characters")


def requested_options(request: LoadRequest, base: EngineOptions) -> EngineOptions:
    """``base`` (the options in effect, or the defaults) with the request's changes applied;
    400 for a value past its bound (``check_bounds``)."""
    check_bounds(request)
    return EngineOptions(
        provider=normalize_provider(request.provider) if request.provider else base.provider,
        threads=request.threads or base.threads,
        graph_optimization=request.graph_optimization or base.graph_optimization,
        kv_precision=request.kv_precision or base.kv_precision,
        ctx_size=request.ctx_size or base.ctx_size,
        prefix_cache=base.prefix_cache,
        host_pool_bytes=base.host_pool_bytes,
        kv_allow_evict=base.kv_allow_evict,
    )


def in_effect(options: EngineOptions, max_context: int, provider: str) -> EngineOptions:
    """The options a loaded model actually runs with: context clamped, provider resolved."""
    return replace(options, ctx_size=min(options.ctx_size, max_context), provider=provider)


def already_in_effect(wanted: EngineOptions, current: EngineOptions, max_context: int) -> bool:
    """True when loading with ``wanted`` would change nothing. ``current`` comes from
    ``in_effect``; a ``wanted`` provider of None means "whichever is in effect"."""
    return (
        min(wanted.ctx_size, max_context) == current.ctx_size
        and (wanted.provider is None or wanted.provider == current.provider)
        and wanted.threads == current.threads
        and wanted.graph_optimization == current.graph_optimization
        and wanted.kv_precision == current.kv_precision
        and wanted.prefix_cache == current.prefix_cache
        and wanted.host_pool_bytes == current.host_pool_bytes
        and wanted.kv_allow_evict == current.kv_allow_evict
    )
