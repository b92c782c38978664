"""``inferos status``: a terminal summary of a running agent, read from its agent API.

Shows health, mode, backend, policy version and the last minute's TTFT, tokens/s and
errors. Exit code 0 when the agent answers and is ok, 1 when degraded or in passthrough,
2 when it cannot be reached.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import httpx


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("status", help="summary of a running agent (health, mode, last minute)")
    p.add_argument("--admin", default="127.0.0.1:8021",
                   help="the agent's admin listener HOST:PORT (default 127.0.0.1:8021)")
    p.add_argument("--json", action="store_true", help="print the raw health as JSON")
    p.set_defaults(func=_cmd_status)


def _ms(value: Any) -> str:
    return "n/a" if value is None else f"{value:.1f} ms"


def _num(value: Any, unit: str = "") -> str:
    return "n/a" if value is None else f"{value:.1f}{unit}"


def render(health: dict[str, Any], metrics: dict[str, Any] | None,
           dashboard: str | None = None) -> str:
    minute = health.get("last_minute") or {}
    settings = health.get("backend_settings") or {}
    controller = health.get("controller") or {}
    backend = health.get("backend") or {}
    status = health.get("policy_status") or {}
    not_in_effect = sorted(k for k, v in status.items()
                           if isinstance(v, dict) and v.get("status") in ("not_applied",
                                                                          "pending"))
    lines = [
        f"status      {health.get('status', '?')}"
        + (f"  ({health['failsafe_reason']})" if health.get("failsafe_reason") else ""),
        f"mode        {health.get('mode', '?')}",
        f"backend     {health.get('upstream', '?')}  {backend.get('kind')}"
        f"  model={backend.get('model')}  (read back:)"
        f"  ctx={settings.get('ctx_size', 'n/a')}  kv={settings.get('cache_type', 'n/a')}"
        f"  threads={settings.get('threads', 'n/a')}",
        f"policy      v{health.get('policy_version', '?')}  "
        f"profile={(health.get('policy') or {}).get('profile')}",
        f"last minute {minute.get('requests', 0)} requests, {minute.get('errors', 0)} errors, "
        f"TTFT p50 {_ms(minute.get('ttft_p50_ms'))} p95 {_ms(minute.get('ttft_p95_ms'))}, "
        f"{_num(minute.get('tps'), ' tok/s')}",
        f"in flight   {health.get('in_flight', 0)}  "
        f"failsafe trips={controller.get('failsafe_trips', 0)}",
    ]
    if dashboard is not None:
        lines.append(f"dashboard   {dashboard}")
    if not_in_effect:
        lines.append(f"not in effect {', '.join(not_in_effect)} (see /v1/health policy_status)")
    if metrics is not None:
        mem = metrics.get("mem") or {}
        lines.append(f"memory      host {_num(mem.get('host_gb'), ' GB')}  "
                     f"vram {_num(mem.get('vram_gb'), ' GB')}  "
                     f"kv levels {json.dumps(mem.get('kv_levels'))}")
    return "\n".join(lines)


def _cmd_status(args: argparse.Namespace) -> int:
    base = f"http://{args.admin}"
    try:
        health = httpx.get(base + "/v1/health", timeout=5).json()
        metrics_response = httpx.get(base + "/v1/metrics", timeout=5)
    except (httpx.HTTPError, ValueError) as exc:
        print(f"inferos: no agent answers at {base} ({type(exc).__name__}). "
              "Is `inferos serve` running? Give its admin address with --admin.",
              file=sys.stderr)
        return 2
    metrics = metrics_response.json() if metrics_response.status_code == 200 else None
    print(json.dumps(health, indent=2) if args.json else render(health, metrics, base + "/"))
    return 0 if health.get("status") == "ok" else 1
