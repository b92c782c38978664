"""JSON Lines telemetry: ``metrics_YYYYMMDD.jsonl`` every second and
``events_YYYYMMDD.jsonl`` for events, both rotated and bounded on disk.

A file past ``max_file_bytes`` is rotated to ``.1`` (the older ``.1`` dropped); files of a
kind beyond ``keep_days`` distinct days are deleted. Writers accept only numbers, short
identifiers and hashes: no prompt or completion text is ever handed to them.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any

# The seed's metric fields, in order, and its quality.spec_accept (as /v1/metrics shows it).
METRIC_FIELDS = ("t", "model", "seq_len", "batch", "tps", "ftl", "p95", "vram", "host_mem",
                 "npu_util", "igpu_util", "kv_L0", "kv_L1", "kv_L2", "kv_L3", "delta_ppl_est",
                 "spec_accept")


class JsonlLog:
    def __init__(self, directory: Path, kind: str, *, max_file_bytes: int = 20 * 2**20,
                 keep_days: int = 7) -> None:
        self.directory = directory
        self.kind = kind
        self.max_file_bytes = max_file_bytes
        self.keep_days = keep_days
        self.lines = 0
        # Events come from the controller's thread and the data plane's (fail-safe trips).
        self._lock = threading.Lock()

    def path_for(self, t: float) -> Path:
        return self.directory / f"{self.kind}_{time.strftime('%Y%m%d', time.localtime(t))}.jsonl"

    def write(self, record: dict[str, Any]) -> None:
        with self._lock:
            self._write(record)

    def _write(self, record: dict[str, Any]) -> None:
        t = float(record.get("t", time.time()))
        path = self.path_for(t)
        self.directory.mkdir(parents=True, exist_ok=True)
        line = json.dumps(record, separators=(",", ":"), default=str) + "\n"
        if path.exists() and path.stat().st_size + len(line) > self.max_file_bytes:
            os.replace(path, path.with_suffix(".jsonl.1"))
        with open(path, "a", encoding="utf-8") as handle:
            handle.write(line)
        self.lines += 1
        if self.lines % 1000 == 1:
            self.prune()

    def prune(self) -> None:
        files = sorted(self.directory.glob(f"{self.kind}_*.jsonl*"))
        days = sorted({f.name.split("_")[1][:8] for f in files})
        for old_day in days[: max(0, len(days) - self.keep_days)]:
            for f in self.directory.glob(f"{self.kind}_{old_day}.jsonl*"):
                f.unlink(missing_ok=True)


class Telemetry:
    def __init__(self, directory: Path) -> None:
        self.metrics = JsonlLog(directory, "metrics")
        self.events = JsonlLog(directory, "events")

    def metric(self, **fields: Any) -> None:
        record = {name: fields.get(name) for name in METRIC_FIELDS}
        record["t"] = fields.get("t", time.time())
        self.metrics.write(record)

    def event(self, kind: str, **fields: Any) -> dict[str, Any]:
        record = {"t": time.time(), "event": kind, **fields}
        self.events.write(record)
        return record
