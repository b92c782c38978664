"""The one way Infer-OS creates an ONNX Runtime ``InferenceSession``: telemetry off first.

``inferos.ort_telemetry`` keeps onnxruntime from writing its telemetry database when it is
imported; this also turns its telemetry events off right before each session, in case the
process imported onnxruntime before Infer-OS (a notebook, a bench harness).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import onnxruntime as ort

from inferos.ort_telemetry import turn_off

__all__ = ["inference_session"]


def inference_session(path: Path | str, options: ort.SessionOptions,
                      providers: Sequence[str]) -> ort.InferenceSession:
    turn_off()
    return ort.InferenceSession(str(path), options, providers=list(providers))
