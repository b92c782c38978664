"""``GET system-info``'s body, in the shape Lemonade's clients read (docs/api/lemonade.md).

Devices this engine does not use are reported, never pretended: each absent one is
``available: false``, unless this onnxruntime has the execution provider that would use it.
``model_storage`` is the models cache's drive, as GAIA reads ``free_bytes`` before a pull.
"""

from __future__ import annotations

import platform
import shutil
from typing import Any

import onnxruntime as ort

from inferos.engine.model_catalog import RECIPE
from inferos.engine.prepare import models_dir


def system_info() -> dict[str, Any]:
    import psutil

    providers = ort.get_available_providers()
    cpu_name = platform.processor() or platform.machine()
    # Lemonade's device keys: current (amd_gpu, nvidia_gpu lists, amd_npu) and older
    # (amd_igpu, amd_dgpu, nvidia_dgpu, npu). The engine detects no GPU or NPU itself.
    def device(provider: str | None) -> dict[str, Any]:
        if provider is not None and provider in providers:
            return {"available": True, "execution_provider": provider}
        return {"available": False, "reason": "not used by this engine on this machine"}

    return {
        "OS Version": platform.platform(),
        "Processor": cpu_name,
        "Physical Memory": f"{psutil.virtual_memory().total / 2**30:.1f} GB",
        "Python": platform.python_version(),
        "Python Packages": _python_packages(),
        "onnxruntime": ort.__version__,
        "execution_providers": providers,
        "model_storage": _model_storage(),
        "devices": {
            "cpu": {"name": cpu_name, "cores": psutil.cpu_count(logical=False),
                    "threads": psutil.cpu_count(logical=True), "available": True,
                    "family": platform.machine()},
            "amd_gpu": [], "nvidia_gpu": [],
            "amd_npu": device(None),
            "amd_igpu": device("DmlExecutionProvider"),
            "amd_dgpu": device("DmlExecutionProvider"),
            "nvidia_dgpu": device("CUDAExecutionProvider"),
            "npu": device(None),
        },
        "recipes": {RECIPE: {"default_backend": "cpu", "backends": {"cpu": {
            "devices": ["cpu"], "state": "installed", "message": "", "action": "",
            "available": True, "version": ort.__version__}}}},
    }


def _python_packages() -> list[str]:
    """What the engine runs on, as Lemonade's Python server listed it ("name==version")."""
    import importlib.metadata

    found = []
    for name in ("inferos", "onnxruntime", "numpy", "tokenizers", "jinja2", "aiohttp",
                 "onnxruntime-genai"):
        try:
            found.append(f"{name}=={importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            continue
    return found


def _model_storage() -> dict[str, Any]:
    """The models cache's drive, in bytes (Lemonade's ``model_storage``); null figures
    where the drive cannot be read."""
    path = models_dir()
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent  # not created yet: the drive it will be on
    try:
        usage = shutil.disk_usage(probe)
    except OSError:
        return {"path": str(path), "used_bytes": None, "total_bytes": None,
                "free_bytes": None}
    return {"path": str(path), "used_bytes": usage.used, "total_bytes": usage.total,
            "free_bytes": usage.free}
