"""Infer-OS: a measured, self-tuning, fail-safe proxy in front of Lemonade Server.

Parts (each its own subpackage, kept as top-level folders in the repository):

- ``inferos.proxy``      the aiohttp data plane that clients talk to
- ``inferos.controller`` the control plane: config, policy, loops, actuators, agent API
- ``inferos.kvstore``    the KV-cache library
- ``inferos.engine``     the embedded Lemonade-compatible backend on ONNX Runtime
"""

# First, before any part imports onnxruntime: its telemetry must be off when it loads.
from inferos import ort_telemetry as _ort_telemetry  # noqa: F401

__version__ = "0.1.0"
