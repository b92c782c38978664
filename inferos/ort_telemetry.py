"""ONNX Runtime's own telemetry, off in every process that imports Infer-OS.

onnxruntime 1.32 records device id, OS, CPU, interpreter path and session ids in
``~/.cache/Microsoft/DeveloperTools/.onnxruntime/onnxruntime.db``, and it does so when the
library is first imported: ``onnxruntime.disable_telemetry_events()`` comes too late to
stop that database (measured: it is written by ``import onnxruntime`` alone). Only
``ORT_DISABLE_TELEMETRY=1`` in the environment before that import prevents it. So
importing this module sets it, and ``inferos/__init__.py`` imports it first: every Infer-OS
module that imports onnxruntime comes after it, and the child processes Infer-OS starts
(the engine, the model builder) inherit the environment.

It is set unconditionally: the issue is that Infer-OS must not let ONNX Runtime report on
its users, whatever the environment says. ``turn_off`` also disables telemetry events for
a process that had imported onnxruntime before Infer-OS (its database exists by then;
later sessions log nothing more).
"""

from __future__ import annotations

import os
import sys

__all__ = ["ENVIRONMENT", "turn_off"]

ENVIRONMENT = "ORT_DISABLE_TELEMETRY"

os.environ[ENVIRONMENT] = "1"


def turn_off() -> None:
    """Disables ONNX Runtime's telemetry events, when onnxruntime is loaded."""
    os.environ[ENVIRONMENT] = "1"
    ort = sys.modules.get("onnxruntime")
    if ort is not None:
        ort.disable_telemetry_events()
