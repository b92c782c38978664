"""Per-level ΔPPL of a prepared model's KV cache, measured on real text and cached with it.

Contract
--------
``calibrate(folder)`` measures, on this model, what holding the past KV at each
``kvstore.Level`` costs in perplexity, and writes ``kv_calibration.json`` into the
prepared folder (temp file + rename: a file that exists is complete). ``load(folder)``
reads it back as a ``KvCalibration``, or None when it is absent or unreadable (logged,
never raised). ``KvCalibration.estimate(tokens_by_level)`` turns the KV an engine actually
holds into its ``delta_ppl_est``: the token-weighted mean of the per-level ΔPPL.

Method: ``engine/kv_perplexity.py``, the core that bench/kv_quality.py also runs, on the
Debian licence texts, with the store's defaults (sinks 4, recent window 64, groups of 32):
per level, the past's unprotected tokens quantized and dequantized at the level's format
(L1 INT8, L2 INT4) before each segment, scored against the exact past. L0 is exact, so its
ΔPPL is 0.0 by definition; L3 (evicted) is not a storage precision and is not calibrated.

Which ΔPPL. Two figures come out of one run, and both are kept in the file:

- ``observed_delta_ppl``: perplexity with the level's past minus perplexity with the exact
  past, on these tokens. At a CI-sized text it is mostly noise for INT4: measured here
  (SmolLM2-135M, 1,024 tokens, segments of 64) -0.007 with a standard error of 0.028, and
  -0.023 +- 0.029 in segments of 128: INT4 KV "improved" the model on this text by chance;
  at 2,048 tokens +0.023 +- 0.026.
- ``delta_ppl``: the ΔPPL that the KL implies, ``ppl_exact * (exp(mean KL) - 1)``: the
  expected rise in perplexity on text distributed as the exact model predicts. The
  realized figure differs from it by a term of first order in the quantization error
  (times the model's own error) whose sign depends on the text, zero in expectation over
  the quantization noise; the KL figure keeps the second-order, systematic part, its
  standard error is 40x (INT4) to 500x (INT8) smaller (INT4: +0.0167 +- 0.0008 on the run
  above), and it is >= 0 by construction. This is what ``estimate`` uses.

What a figure means: the ΔPPL of text whose whole unprotected past sits at that level.
``estimate`` weights it by the share of tokens at each level, a linear model of a mixed
past; bench/kv_quality.py's "mixed" row measures a real mix against it.

Sized for CI (it runs at prepare time in every fresh run, on 2 cores): 1,024 tokens in
segments of 64, three forward passes per segment, took 10 s on SmolLM2-135M (fp32). Short
segments because a segment's own tokens attend to each other exactly: at 64 a scored
token sees, besides the 64-token recent window, 32 exact tokens of its own segment on
average, closer to decoding one token at a time than the bench's 128.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from inferos.engine.kv_perplexity import (
    LICENCE_TEXTS,
    open_model,
    quantized,
    read_text,
    score_segments,
    token_ids,
)
from inferos.errors import ModelError
from inferos.kvstore.levels import (
    DEFAULT_RECENT_WINDOW,
    DEFAULT_SINK_TOKENS,
    LEVEL_FORMATS,
    Level,
)
from inferos.kvstore.quantize import DEFAULT_GROUP_SIZE

__all__ = [
    "CALIBRATION_FILE",
    "LEVELS",
    "KvCalibration",
    "calibrate",
    "describe",
    "load",
]

log = logging.getLogger(__name__)

CALIBRATION_FILE: Final = "kv_calibration.json"
# Bumped when the method changes: a file of another version is measured again.
FILE_VERSION: Final = 1
LEVELS: Final = (Level.L0, Level.L1, Level.L2)
_LEVEL_NAMES: Final = frozenset(lvl.name for lvl in LEVELS)
DEFAULT_TOKENS: Final = 1024
DEFAULT_SEGMENT: Final = 64


@dataclass(frozen=True)
class KvCalibration:
    """A model's measured ΔPPL per KV level (``"L0"``, ``"L1"``, ``"L2"``; L0 is 0.0).

    ``delta_ppl`` is the KL-implied figure, ``observed_delta_ppl`` the raw perplexity
    difference (module docstring). ``tokens`` were run through the model
    (``scored_tokens`` of them scored) from the text whose SHA-256 is ``text_sha256``;
    ``measured`` holds the rest of the file: standard errors, KL, segment, window, sinks,
    group, seconds, threads, tool versions, files.
    """

    delta_ppl: Mapping[str, float]
    reference_ppl: float
    tokens: int
    text_sha256: str
    scored_tokens: int = 0
    observed_delta_ppl: Mapping[str, float] = field(default_factory=dict)
    measured: Mapping[str, Any] = field(default_factory=dict)

    def estimate(self, tokens_by_level: Mapping[str, int]) -> float:
        """Token-weighted mean ΔPPL of the levels given ("L0".."L2"; other keys ignored)."""
        counts = {lvl: n for lvl, n in tokens_by_level.items() if lvl in _LEVEL_NAMES}
        total = sum(counts.values())
        if total <= 0:
            return 0.0
        return sum(self.delta_ppl[lvl] * n for lvl, n in counts.items()) / total


def load(folder: Path) -> KvCalibration | None:
    """The calibration cached in ``folder``; None when absent or unreadable (logged)."""
    path = Path(folder) / CALIBRATION_FILE
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:  # JSONDecodeError and UnicodeDecodeError too
        log.warning("ignoring %s: %s", path, exc)
        return None
    try:
        return _parse(raw)
    except (TypeError, ValueError, KeyError) as exc:
        log.warning("ignoring %s: %s", path, exc)
        return None


def _finite(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) \
            or not math.isfinite(value):
        raise ValueError(f"{what} is not a finite number: {value!r}")
    return float(value)


def _parse(raw: object) -> KvCalibration:
    if not isinstance(raw, dict):
        raise TypeError("not a JSON object")
    if raw.get("version") != FILE_VERSION:
        raise ValueError(f"version {raw.get('version')!r}, this build reads {FILE_VERSION}")
    delta_ppl, observed = (_per_level(raw, key) for key in ("delta_ppl", "observed_delta_ppl"))
    reference = _finite(raw["reference_ppl"], "reference_ppl")
    tokens, scored, sha = raw["tokens"], raw["scored_tokens"], raw["text_sha256"]
    if not (isinstance(tokens, int) and isinstance(scored, int) and 0 < scored <= tokens):
        raise ValueError(f"tokens {tokens!r}, scored_tokens {scored!r}")
    if reference <= 0 or not isinstance(sha, str) or len(sha) != 64:
        raise ValueError("reference_ppl or text_sha256 is malformed")
    measured = {k: v for k, v in raw.items()
                if k not in ("delta_ppl", "observed_delta_ppl", "reference_ppl", "tokens",
                             "scored_tokens", "text_sha256")}
    return KvCalibration(delta_ppl, reference, tokens, sha, scored, observed, measured)


def _per_level(raw: dict[str, Any], key: str) -> dict[str, float]:
    table = raw[key]
    if not isinstance(table, dict):
        raise TypeError(f"{key} is not an object")
    values = {lvl.name: _finite(table[lvl.name], f"{key}.{lvl.name}") for lvl in LEVELS}
    if values[Level.L0.name] != 0.0:
        raise ValueError(f"{key}.L0 must be 0.0 (exact), got {values[Level.L0.name]}")
    return values


def calibrate(folder: Path, *, tokens: int = DEFAULT_TOKENS, segment: int = DEFAULT_SEGMENT,
              sinks: int = DEFAULT_SINK_TOKENS, recent: int = DEFAULT_RECENT_WINDOW,
              group: int = DEFAULT_GROUP_SIZE, threads: int | None = None,
              texts: Sequence[str | Path] = LICENCE_TEXTS) -> KvCalibration:
    """Measure the model in ``folder`` level by level and cache it there (see the module).

    Raises ``ModelError`` when the model or the text cannot be used.
    """
    from inferos.engine.prepare import tool_versions  # prepare imports this module

    if not 0 < segment < tokens:
        raise ValueError(f"need 0 < segment ({segment}) < tokens ({tokens})")
    folder = Path(folder)
    started = time.monotonic()
    text = read_text(texts)  # first: the cheap way to fail
    model = open_model(folder, threads)
    ids = token_ids(model, text, tokens)
    settings = {lvl.name: quantized(model.shape, LEVEL_FORMATS[lvl], group, sinks, recent)
                for lvl in LEVELS if lvl in LEVEL_FORMATS}
    try:
        reference, scores = score_segments(model, ids, segment, settings)
    except Exception as exc:  # onnxruntime's own errors have no common base class
        raise ModelError(f"onnxruntime failed measuring {folder}: {exc}") from exc
    implied = {name: sc.implied_delta_ppl(reference) for name, sc in scores.items()}
    observed = {name: sc.observed_delta_ppl(reference) for name, sc in scores.items()}
    exact = Level.L0.name

    def table(values: Mapping[str, float], digits: int = 8) -> dict[str, float]:
        return {exact: 0.0, **{name: round(v, digits) for name, v in values.items()}}

    record = {
        "version": FILE_VERSION,
        "delta_ppl": table({n: v for n, (v, _) in implied.items()}),
        "delta_ppl_stderr": table({n: se for n, (_, se) in implied.items()}),
        "observed_delta_ppl": table({n: v for n, (v, _) in observed.items()}),
        "observed_delta_ppl_stderr": table({n: se for n, (_, se) in observed.items()}),
        "kl_mean": table({n: sc.kl / sc.n for n, sc in scores.items()}, 10),
        "reference_ppl": round(reference.ppl, 6),
        "tokens": tokens,
        "scored_tokens": reference.n,
        "text": [str(p) for p in texts],
        "text_sha256": hashlib.sha256(text.encode("utf-8")).hexdigest(),
        "segment": segment,
        "sinks": sinks,
        "recent_window": recent,
        "group_size": group,
        "threads": threads,
        "seconds": round(time.monotonic() - started, 2),
        "measured_at": round(time.time()),
        "tools": tool_versions(("onnxruntime", "tokenizers", "numpy")),
    }
    path = folder / CALIBRATION_FILE
    try:
        _write_atomically(path, json.dumps(record, indent=2) + "\n")
    except OSError as exc:
        raise ModelError(f"could not write {path}: {exc}") from exc
    return _parse(record)


def describe(calibration: KvCalibration) -> str:
    """One line of figures, as ``inferos model prepare`` prints them."""
    m = calibration.measured
    se, obs_se = m.get("delta_ppl_stderr", {}), m.get("observed_delta_ppl_stderr", {})
    levels = ", ".join(
        f"{lvl.name} ({LEVEL_FORMATS[lvl].name}) {calibration.delta_ppl[lvl.name]:+.3g}"
        f" ± {se.get(lvl.name, math.nan):.2g} (perplexity itself moved "
        f"{calibration.observed_delta_ppl.get(lvl.name, math.nan):+.3g}"
        f" ± {obs_se.get(lvl.name, math.nan):.2g})"
        for lvl in LEVELS if lvl in LEVEL_FORMATS)
    return (f"KV calibration: PPL {calibration.reference_ppl:.3f} with exact KV over "
            f"{calibration.scored_tokens} scored tokens; ΔPPL from KL: {levels}; "
            f"{m.get('seconds', math.nan)} s")


def _write_atomically(path: Path, content: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(content)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
