"""Which engine options a ``load`` asks for, and whether they are the ones in effect.

A ``load`` names only what it wants to change: an option it leaves out keeps the value in
effect when the same model is loaded, or takes the server's default otherwise. ``ctx_size``
above the model's maximum is clamped to it, so "the same options" compares clamped values:
GAIA's ``ctx_size: 65536`` against an 8192-token model is a no-op the second time.
"""

from __future__ import annotations

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


def requested_options(request: LoadRequest, base: EngineOptions) -> EngineOptions:
    """``base`` (the options in effect, or the defaults) with the request's changes applied."""
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
