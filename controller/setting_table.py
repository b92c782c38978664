"""Every setting of Infer-OS, declared once: the table the rest derives from.

A ``Setting`` says where it lives in the YAML file (its dotted ``path``), its type with its
bounds or choices, its default, the environment names that override it
(``INFEROS_<PATH>`` always, plus the short aliases users expect), the ``inferos serve`` flag
where there is one (the flags are declared in ``inferos/commands/serve.py``; a test checks
they agree), whether it is *policy* (patchable live by ``POST /v1/policy``, under
``infer_os.``) and one line of documentation. From this table come:

- ``config.SCHEMA``: loading the file, environment and flags (``controller/config.py``);
- the ``Policy`` dataclasses' defaults and ``apply_patch``'s validation
  (``controller/policy.py``);
- the request schema of ``POST /v1/policy`` in the OpenAPI document
  (``controller/openapi.py``);
- the reference table of the README (``reference_table()``).

Adding a declaration adds it to all of them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from inferos.controller import liveness as liveness_defaults
from inferos.controller.cache_types import CACHE_TYPES
from inferos.controller.setting_types import (
    Address,
    Bool,
    ByteSize,
    Choice,
    Float,
    Int,
    SettingType,
    Text,
    TextList,
    Url,
)
from inferos.engine.engine_policy import DEFAULT_HOST_POOL_BYTES
from inferos.engine.prepare import DEFAULT_PRECISION, PRECISIONS
from inferos.proxy import connection_limits as connection_defaults
from inferos.proxy import settings as proxy_defaults
from inferos.proxy.settings import HostPort

MODES = ("optimize", "passthrough")
PROFILES = ("safe", "balanced", "aggressive")
SCHEDULER_MODES = ("hybrid", "gpu_only", "npu_only", "cpu_only")
DEVICES = ("dml", "npu", "cpu", "cuda", "igpu")
# llama.cpp KV-cache types (--cache-type-k/-v), from their own table.
CACHE_TYPE_NAMES = tuple(cache.name for cache in CACHE_TYPES)
ENGINE_BACKENDS = ("engine", "llamacpp")

POLICY_PREFIX = "infer_os."
ENV_PREFIX = "INFEROS_"


def env_name(path: str) -> str:
    """The environment name every setting has: ``INFEROS_`` + the path, ``.`` as ``_``."""
    return ENV_PREFIX + path.upper().replace(".", "_")


@dataclass(frozen=True, slots=True)
class Setting:
    path: str                      # in the YAML file: "infer_os.kv.recent_window"
    kind: SettingType
    default: Any
    doc: str
    policy: bool = False           # patchable live by POST /v1/policy
    nullable: bool = False         # null is a value (for pins: "let the controller decide")
    env: tuple[str, ...] = ()      # aliases besides INFEROS_<PATH>
    flag: str | None = None        # the `inferos serve` flag, where there is one
    shown_default: str | None = None  # the README's words for a default this machine sizes

    @property
    def key(self) -> str:
        """The policy key (``kv.recent_window``) for policy settings, else the path."""
        return self.path.removeprefix(POLICY_PREFIX) if self.policy else self.path

    @property
    def env_names(self) -> tuple[str, ...]:
        return (env_name(self.path), *self.env)

    def parse(self, value: Any, *, strict: bool = False) -> Any:
        """The value, checked against type and bounds; ``ValueError`` with a message if not.
        ``strict`` for JSON bodies (no strings for numbers or booleans)."""
        if value is None and self.nullable:
            return None
        if (not strict and self.nullable and isinstance(value, str)
                and value.strip().lower() in ("", "none", "null")):
            return None
        return self.kind.parse(value, strict=strict)

    def json_schema(self) -> dict[str, Any]:
        schema = self.kind.json_schema()
        if self.nullable:
            if isinstance(schema.get("type"), str):
                schema["type"] = [schema["type"], "null"]
                if "enum" in schema:
                    schema["enum"] = [*schema["enum"], None]
            else:
                schema = {"anyOf": [schema, {"type": "null"}]}
        schema["description"] = self.doc
        schema["default"] = _json_value(self.default)
        return schema


def _json_value(value: Any) -> Any:
    return str(value) if isinstance(value, HostPort) else value


def _seconds() -> Float:
    return Float(minimum=0.0, above=True, unit="s")


def _ms() -> Float:
    return Float(minimum=0.0, above=True, unit="ms")


_FRACTION = Float(minimum=0.0, maximum=1.0)
_MIB = 2**20


def _policy(path: str, kind: SettingType, default: Any, doc: str, *,
            nullable: bool = False, shown_default: str | None = None) -> Setting:
    return Setting(POLICY_PREFIX + path, kind, default, doc, policy=True, nullable=nullable,
                   shown_default=shown_default)


SETTINGS: tuple[Setting, ...] = (
    # Listeners and the upstream.
    Setting("listen.proxy", Address(), HostPort.parse(proxy_defaults.DEFAULT_LISTEN),
            "the proxy's listener: clients point here", env=("INFEROS_LISTEN",),
            flag="--listen"),
    Setting("listen.admin", Address(), HostPort.parse(proxy_defaults.DEFAULT_ADMIN),
            "the agent API, health and metrics listener", env=("INFEROS_ADMIN",),
            flag="--admin"),
    Setting("listen.admin_token", Text(max_length=256), None,
            "when set, every change through the admin API needs 'Authorization: Bearer "
            "<token>'; required when listen.admin is beyond loopback",
            nullable=True, env=("INFEROS_ADMIN_TOKEN",)),
    Setting("listen.allowed_hosts", TextList(), (),
            "Host names both listeners answer besides loopback and their own listen "
            "address (DNS rebinding defence); '*': any", env=("INFEROS_ALLOWED_HOSTS",)),
    Setting("listen.allowed_origins", TextList(), (),
            "browser origins (scheme://host:port) besides the admin's own that may change "
            "state through the admin API; '*': any", env=("INFEROS_ALLOWED_ORIGINS",)),
    # Bounds on the clients' connections, on both listeners (proxy/connection_limits.py).
    Setting("listen.header_timeout_s", _seconds(), connection_defaults.DEFAULT_HEADER_TIMEOUT_S,
            "seconds a connection has to send a complete request head (from its opening, or "
            "its first byte after a response); then 408 and closed; null: no limit",
            nullable=True),
    Setting("listen.keepalive_timeout_s", _seconds(),
            connection_defaults.DEFAULT_KEEPALIVE_TIMEOUT_S,
            "seconds an idle kept-alive connection (no request in progress) stays open; a "
            "streaming response is never cut by it"),
    Setting("listen.max_connections", Int(1, 1_000_000),
            connection_defaults.DEFAULT_MAX_CONNECTIONS,
            "client connections open at once, per listener; past it 503 and closed "
            "(inferos_connections_refused_total); null: no cap", nullable=True),
    Setting("upstream.url", Url(), None,
            "the backend (Lemonade or OpenAI-compatible); none: a Lemonade that answers on "
            "13305 or 8000, else the embedded engine", nullable=True,
            env=("INFEROS_UPSTREAM",), flag="--upstream"),
    Setting("upstream.connect_timeout_s", _seconds(), proxy_defaults.DEFAULT_CONNECT_TIMEOUT_S,
            "seconds to connect to the backend", flag="--connect-timeout"),
    Setting("upstream.idle_timeout_s", _seconds(), proxy_defaults.DEFAULT_IDLE_TIMEOUT_S,
            "seconds of backend silence before a request ends; null: none", nullable=True,
            flag="--idle-timeout"),
    Setting("upstream.total_timeout_s", _seconds(), None,
            "seconds a whole request may take; null: no limit (generations may be long)",
            nullable=True),
    # The backend's liveness probe (controller/liveness.py).
    Setting("upstream.liveness.interval_s", _seconds(), liveness_defaults.DEFAULT_INTERVAL_S,
            "seconds between two probes of the backend's health; null: no probe",
            nullable=True),
    Setting("upstream.liveness.timeout_s", _seconds(), liveness_defaults.DEFAULT_TIMEOUT_S,
            "seconds a probe waits for any answer; no answer is a failed probe"),
    Setting("upstream.liveness.failures", Int(1, 100), liveness_defaults.DEFAULT_FAILURES,
            "failed probes in a row that mark the backend unresponsive"),
    Setting("upstream.liveness.wait_s", _seconds(), liveness_defaults.DEFAULT_WAIT_S,
            "seconds a new generation waits for an unresponsive backend to come back; then "
            "503 backend_unresponsive with Retry-After"),
    Setting("upstream.max_body_bytes", ByteSize(), proxy_defaults.DEFAULT_MAX_BODY_BYTES,
            "largest request body forwarded"),
    Setting("passthrough", Bool(), False,
            "forward only: observe, decide and change nothing", flag="--passthrough"),
    Setting("proxy.deny_paths", TextList(starts_with="/"), proxy_defaults.DEFAULT_DENY_PATHS,
            "paths the proxy refuses (403 path_denied) under every API prefix and bare; "
            "'*' matches anything; [] forwards all"),
    # The policy: what the user wants, patchable live.
    _policy("mode", Choice(MODES), "optimize",
            "optimize, or pass everything through untouched"),
    _policy("profile", Choice(PROFILES), "balanced",
            "the named bundle applied first; the keys given override it"),
    _policy("quality.max_delta_ppl", Float(minimum=0.0, maximum=100.0), 0.5,
            "quality budget: the largest estimated perplexity increase allowed"),
    _policy("quality.min_accept_rate", Float(minimum=0.0, maximum=1.0, above=True), 0.5,
            "speculation is kept only while this share of drafted tokens is accepted"),
    _policy("kv.recent_window", Int(1, 1_000_000), 64,
            "the most recent tokens whose KV always stays at full precision"),
    _policy("kv.sink_tokens", Int(0, 4096), 4,
            "the first tokens whose KV always stays at full precision (attention sinks)"),
    _policy("kv.level_thresholds.L1_int8", _FRACTION, 0.7,
            "parked KV whose importance falls below this goes to INT8"),
    _policy("kv.level_thresholds.L2_int4", _FRACTION, 0.5,
            "below this, INT4 (at most L1_int8)"),
    _policy("kv.level_thresholds.L3_evict", _FRACTION, 0.3,
            "below this, evicted when allow_evict (at most L2_int4)"),
    _policy("kv.cache_type", Choice(CACHE_TYPE_NAMES), "f16",
            "the most compact llama.cpp KV-cache type allowed (--cache-type-k/-v)"),
    _policy("kv.allow_evict", Bool(), False,
            "whether KV may be evicted inside one long context"),
    _policy("io.enable_iobinding", Bool(), True,
            "ONNX Runtime IOBinding: inputs and outputs stay on the device"),
    _policy("io.dml_pool_bytes", ByteSize(), 2048 * _MIB,
            "device memory for KV on DirectML"),
    # Sized from this machine's memory (engine/memory_budget.py), as the engine sizes it.
    _policy("io.host_pool_bytes", ByteSize(), DEFAULT_HOST_POOL_BYTES,
            "host memory parked KV may hold before it is demoted",
            shown_default="min(4096MiB, MemTotal/8)"),
    _policy("scheduler.mode", Choice(SCHEDULER_MODES), "hybrid",
            "where prefill and decode run; devices this machine lacks fall back to CPU"),
    _policy("scheduler.prefill_device", Choice(DEVICES), "dml", "the device for prefill"),
    _policy("scheduler.decode_device", Choice(DEVICES), "npu", "the device for decode"),
    # The embedded engine's batch, queue and budget (bounds as engine/engine_policy.py
    # parses them; a test keeps the two equal).
    _policy("scheduler.max_batch", Int(1, 16), 8,
            "most sequences the embedded engine decodes together in one run"),
    _policy("scheduler.max_queue", Int(0, 4096), 32,
            "requests that may wait for a free row; past it, 503 with Retry-After"),
    _policy("scheduler.tpot_budget_ms", Float(minimum=1.0, maximum=60_000.0, unit="ms"),
            100.0, "time per output token the running streams keep while a prompt "
                   "is prefilled in chunks"),
    _policy("speculation.enabled", Bool(), True,
            "prompt-lookup speculation: drafts verified in one run (greedy output "
            "unchanged)"),
    _policy("speculation.max_draft", Int(1, 64), 8, "most tokens drafted per step"),
    _policy("backend.ctx_size", Int(256, 1 << 20), None,
            "pins the context size in tokens; null: decided from the requests seen",
            nullable=True),
    _policy("backend.threads", Int(1, 1024), None,
            "pins the backend's threads; null: decided", nullable=True),
    _policy("backend.provider", Text(max_length=64), None,
            "pins the execution provider (cpu, dml, cuda); null: decided", nullable=True),
    # The controller's own knobs (read at start).
    Setting("infer_os.loops.fast_ms", _ms(), 1.0, "period of the fast control loop"),
    Setting("infer_os.loops.mid_ms", _ms(), 10.0, "period of the mid control loop"),
    Setting("infer_os.loops.slow_ms", _ms(), 100.0, "period of the slow control loop"),
    Setting("infer_os.telemetry.push_interval_ms", _ms(), 1000.0,
            "period of the metrics lines in the JSONL log"),
    Setting("infer_os.telemetry.dir", Text(), "logs", "folder of the JSONL metrics and events"),
    Setting("infer_os.failsafe.stale_after_ms", _ms(), 75.0,
            "a controller that could have run this long without a heartbeat (time the "
            "whole process was stopped or starved does not count) turns the proxy to "
            "passthrough"),
    Setting("infer_os.failsafe.recover_after_s", _seconds(), 5.0,
            "healthy seconds before passthrough is lifted again"),
    Setting("infer_os.decisions.every_s", _seconds(), 10.0,
            "seconds between decisions on backend settings"),
    Setting("infer_os.decisions.cooldown_s", _seconds(), 60.0,
            "least seconds between two reconfigurations; null: none", nullable=True),
    Setting("infer_os.decisions.min_requests", Int(1, 1_000_000), 8,
            "generations an automatic change needs as evidence (never one request)"),
    Setting("infer_os.decisions.min_span_s", _seconds(), 30.0,
            "seconds the evidence of an automatic change must span"),
    Setting("infer_os.decisions.client_backoff_s", _seconds(), 120.0,
            "seconds the controller changes nothing after a client's own /load or /unload"),
    # The backend Infer-OS runs itself when no upstream is given.
    Setting("engine.backend", Choice(ENGINE_BACKENDS), "engine",
            "run the embedded engine, or llama.cpp's server on engine.model (a GGUF file)",
            flag="--backend"),
    Setting("engine.model", Text(), None,
            "the engine's model name or folder (default smollm2-135m-instruct), or the GGUF "
            "file for llamacpp", nullable=True, env=("INFEROS_MODEL",), flag="--model"),
    Setting("engine.precision", Choice(PRECISIONS), DEFAULT_PRECISION,
            "the weights precision the engine's model is prepared in"),
)

BY_PATH: Mapping[str, Setting] = {s.path: s for s in SETTINGS}
POLICY_SETTINGS: Mapping[str, Setting] = {s.key: s for s in SETTINGS if s.policy}


def _cell(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, tuple):
        return ", ".join(value) if value else "[]"
    if isinstance(value, int) and value >= _MIB and value % _MIB == 0:
        return f"{value // _MIB}MiB"
    return str(value)


def reference_table() -> str:
    """The README's table of every key, in Markdown."""
    lines = ["| key | type | default | environment, flag | what |",
             "|---|---|---|---|---|"]
    for s in SETTINGS:
        where = ", ".join([f"`{name}`" for name in s.env_names]
                          + ([f"`{s.flag}`"] if s.flag else []))
        live = " *(policy)*" if s.policy else ""
        kind = s.kind.describe().replace("|", "\\|") + (" or null" if s.nullable else "")
        default = s.shown_default or _cell(s.default)
        lines.append(f"| `{s.path}` | {kind} | `{default}` | {where} | "
                     f"{s.doc}{live} |")
    return "\n".join(lines) + "\n"
