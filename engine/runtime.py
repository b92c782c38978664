"""The engine core: a prepared ONNX model on plain ONNX Runtime, with a KV cache it owns.

``load_model`` opens a prepared folder (``engine/prepare.py``) and returns a
``LoadedModel``: tokenizer, chat template, one ``InferenceSession``, the rows of a static
batch KV buffer bound through ``IOBinding`` (``engine/kv_buffers.py``) and the
``BatchScheduler`` that steps its generations (``engine/batch_scheduler.py``). The runs
themselves are here: ``run_row`` (one row, S tokens: prefill chunks, verifications) and
``run_rows`` (one decode step of several rows). ``generate`` is one generation through the
scheduler, stepped on the calling thread, yielding ``TokenEvent``s as they come.

Prefix reuse: a prompt skips the prefill of its longest prefix whose KV is at hand, in the
row it gets (a free row remembers what it last held) or in the prefix cache
(``engine/prefix_cache.py``: the KV of finished generations in a ``kvstore.KvStore`` under
a byte budget, restored, dequantized if it was demoted, into the buffer). The reused
tokens are reported on the first event (``cached_tokens``), as llama.cpp reports
``cache_n``. ``EngineOptions.prefix_cache`` False turns all reuse off.

Live policy (engine/engine_policy.py): ``set_policy`` swaps the ``EnginePolicy`` in effect,
from any thread, without waiting; the generation thread reads it at its next KV-store
operation (before a prompt takes its buffer, before a finished one parks its KV) and at
``follow_policy``, which the server runs on that thread as soon as it is free. There the
store takes the policy's window, sinks, thresholds and byte budget and re-levels what is
parked (``releveled_version`` says to which version it has). ``kv.allow_evict`` is read
once per generation: a generation never sees half a change. ``EngineOptions``'
``host_pool_bytes`` and ``kv_allow_evict`` are the start values of a model loaded alone.

``stats()`` is assembled in engine/runtime_stats.py.

Everything here runs on one thread at a time (the server's ``ModelSlot`` worker, or the
caller of ``generate``): concurrent generations share the session and the batch buffer
only through the scheduler's steps.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

from inferos.engine.batch_scheduler import BatchScheduler
from inferos.engine.chat_template import ChatTemplate
from inferos.engine.context_eviction import ContextEvictor
from inferos.engine.engine_policy import DEFAULT_HOST_POOL_BYTES, MAX_BATCH_LIMIT, EnginePolicy
from inferos.engine.kv_buffers import KvBuffer, KvPool, KvShape, bind_rows
from inferos.engine.memory_budget import batch_rows, machine_memory
from inferos.engine.ort_session import inference_session
from inferos.engine.policy_ack import EngineFacts
from inferos.engine.prefix_cache import PrefixCache
from inferos.engine.quality_guard import QualityGuard
from inferos.engine.runtime_stats import NO_PARKED_KV, model_stats
from inferos.engine.sampling_params import SamplingParams, TokenEvent
from inferos.engine.step_costs import PREFILL_CHUNK
from inferos.errors import ModelError
from inferos.kvstore.rotary import measured_frequencies
from inferos.kvstore.store import KvStoreConfig

KV_PRECISIONS = ("fp32",)
GRAPH_OPTIMIZATIONS = {
    "disabled": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}
ACCOUNT_EVERY = 32
PREFERRED_PROVIDERS = ("CUDAExecutionProvider", "DmlExecutionProvider", "CPUExecutionProvider")


def best_provider(available: list[str] | None = None) -> str:
    available = ort.get_available_providers() if available is None else available
    return next((p for p in PREFERRED_PROVIDERS if p in available), "CPUExecutionProvider")


@dataclass(frozen=True)
class EngineOptions:
    """How a model is loaded. ``provider`` None: the best this onnxruntime offers (CUDA,
    then DirectML, then CPU); ``threads`` None: ONNX Runtime's default (physical cores).
    ``prefix_cache``: reuse the KV of earlier prompts' prefixes; ``host_pool_bytes``: what
    the prefix cache's store may hold before it demotes (policy ``io.host_pool_bytes``);
    ``kv_allow_evict``: a context that outgrows ``ctx_size`` evicts its least important
    tokens instead of ending (policy ``kv.allow_evict``, engine/context_eviction.py).
    These two are start values: the live policy (``LoadedModel.set_policy``) governs."""

    provider: str | None = None
    threads: int | None = None
    graph_optimization: str = "all"
    kv_precision: str = "fp32"
    ctx_size: int = 4096
    prefix_cache: bool = True
    host_pool_bytes: int = DEFAULT_HOST_POOL_BYTES
    kv_allow_evict: bool = False


@dataclass
class _Counters:
    generations: int = 0
    prompt_tokens: int = 0
    reused_tokens: int = 0
    prefix_hits: int = 0
    prefix_misses: int = 0
    generated_tokens: int = 0
    prefill_s: float = 0.0
    decode_s: float = 0.0
    runs: int = 0
    checked_runs: int = 0  # runs whose outputs were checked for in-place writes
    kv_copies: int = 0        # present outputs onnxruntime did not write into our buffer
    kv_bytes_copied: int = 0  # what copying them back cost
    kv_bytes_in_place: int = 0  # KV a grown (unbound) cache would have copied instead


class LoadedModel:
    def __init__(self, name: str, folder: Path, options: EngineOptions) -> None:
        if options.kv_precision not in KV_PRECISIONS:
            raise ValueError(f"kv_precision '{options.kv_precision}' is not available for this "
                             f"model's graph; one of {', '.join(KV_PRECISIONS)}")
        if options.graph_optimization not in GRAPH_OPTIMIZATIONS:
            raise ValueError(f"graph_optimization '{options.graph_optimization}': one of "
                             f"{', '.join(GRAPH_OPTIMIZATIONS)}")
        if options.ctx_size <= 1:
            raise ValueError("ctx_size must be at least 2 tokens")
        if options.host_pool_bytes <= 0:
            raise ValueError("host_pool_bytes must be positive")
        self.name = name
        self.folder = folder
        try:
            genai = json.loads((folder / "genai_config.json").read_text())["model"]
            decoder = genai["decoder"]
            self.max_context = int(genai["context_length"])
            self.tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
            self.session = self._session(folder / decoder["filename"], options)
        except (OSError, KeyError, ValueError, json.JSONDecodeError) as exc:
            raise ModelError(f"{folder} is not a prepared model: {exc}") from exc
        except Exception as exc:  # onnxruntime's own errors have no common base class
            raise ModelError(f"onnxruntime could not load {folder}: {exc}") from exc
        self.provider = self.session.get_providers()[0]
        self.options = options
        self.ctx_size = min(options.ctx_size, self.max_context)
        layers = int(decoder["num_hidden_layers"])
        # logits are [batch, sequence, vocab]; the builder fixes vocab in the graph
        outputs = {o.name: o for o in self.session.get_outputs()}
        self._logits_width = int(outputs["logits"].shape[2])
        # The final norm's output, in graphs prepared with include_hidden_states (layout 3)
        self.hidden_size: int | None = int(outputs["hidden_states"].shape[2]) \
            if "hidden_states" in outputs else None
        self.kv_shape = KvShape(layers, int(decoder["num_key_value_heads"]),
                                int(decoder["head_size"]), self.ctx_size)
        self._past = [(f"past_key_values.{i}.key", f"past_key_values.{i}.value")
                      for i in range(layers)]
        self._present = [(f"present.{i}.key", f"present.{i}.value") for i in range(layers)]
        # past key, past value, present key, present value of each layer, for bindings
        self._kv_names = [(pk, pv, ck, cv) for (pk, pv), (ck, cv)
                          in zip(self._past, self._present, strict=True)]
        self.policy = EnginePolicy.starting(self.provider,
                                            host_pool_bytes=options.host_pool_bytes,
                                            allow_evict=options.kv_allow_evict)
        self._followed = self.policy  # what the store has taken (generation thread only)
        self.releveled_version = self.policy.version
        self.prefix_cache = PrefixCache(
            self.kv_shape, self.policy.store_config(KvStoreConfig()),
            QualityGuard.for_model(folder, self.policy.max_delta_ppl),
        ) if options.prefix_cache else None
        # Rows for the most sequences the live policy may batch (scheduler.max_batch);
        # np.zeros pages are resident only once a row is used.
        # Fewer rows where sixteen would exceed a quarter of the machine's memory
        # (engine/memory_budget.py); the scheduler admits only while a row is free.
        self.pool = KvPool(self.kv_shape, capacity=batch_rows(
            self.kv_shape.bytes, MAX_BATCH_LIMIT, machine_memory()), cache=self.prefix_cache)
        self.scheduler = BatchScheduler(self)
        self._checked_widths: set[int] = set()
        # Built whatever the policy says, so that kv.allow_evict can be switched live.
        self.no_eviction: str | None = None
        try:
            self.evictor: ContextEvictor | None = ContextEvictor(self._rotary_frequencies())
        except ModelError as exc:
            self.evictor, self.no_eviction = None, str(exc)
        eos = genai.get("eos_token_id", [])
        self.stop_ids = frozenset(eos if isinstance(eos, list) else [eos]) | frozenset(
            i for i in (self.tokenizer.token_to_id(t) for t in ("<|endoftext|>", "<|im_end|>"))
            if i is not None)
        self.template = self._template(folder)
        self.counters = _Counters()

    @staticmethod
    def _session(path: Path, options: EngineOptions) -> ort.InferenceSession:
        so = ort.SessionOptions()
        so.graph_optimization_level = GRAPH_OPTIMIZATIONS[options.graph_optimization]
        if options.threads:
            so.intra_op_num_threads = options.threads
        so.inter_op_num_threads = 1
        # Spinning threads steal the core the event loop and a second session need.
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        providers = [options.provider or best_provider()]
        if providers[0] != "CPUExecutionProvider":
            providers.append("CPUExecutionProvider")
        return inference_session(path, so, providers)

    def _template(self, folder: Path) -> ChatTemplate | None:
        path = folder / "chat_template.jinja"
        if not path.is_file():
            return None
        config_path = folder / "tokenizer_config.json"
        config: dict[str, Any] = json.loads(config_path.read_text()) \
            if config_path.is_file() else {}

        def token(key: str) -> str:
            value = config.get(key) or ""
            return value.get("content", "") if isinstance(value, dict) else str(value)

        return ChatTemplate(path.read_text(), token("bos_token"), token("eos_token"))

    def _rotary_frequencies(self) -> np.ndarray:
        """The graph's rotary angle per position of each dimension pair, measured: the
        layer-0 keys of one token at positions 0, 1 and 2 differ by the rotation alone.
        The graph does not say its rotary base; this works for any of them."""
        try:
            (keys,) = self.session.run([self._present[0][0]], self._cold_feed([1, 1, 1]))
        except Exception as exc:  # onnxruntime's errors have no common base class
            raise ModelError(f"onnxruntime failed: {exc}") from exc
        k = keys[0]  # [H, 3, D]
        once = measured_frequencies(k[:, 0], k[:, 1])
        twice = measured_frequencies(k[:, 0], k[:, 2])
        if not np.allclose(np.angle(np.exp(2j * once)), twice, atol=1e-3):
            raise ModelError("this graph's keys are not rotated as Llama's are (half-split "
                             "rotary): eviction inside a context is not available")
        return once

    # -- text -------------------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False).ids)

    def decode(self, ids: list[int]) -> str:
        return str(self.tokenizer.decode(ids, skip_special_tokens=False))

    def chat_prompt(self, messages: list[dict[str, Any]],
                    tools: list[dict[str, Any]] | None = None) -> str:
        if self.template is None:
            # No template shipped: the plain "role: content" layout llama.cpp falls back to.
            return "".join(f"{m.get('role')}: {m.get('content')}\n" for m in messages) + \
                "assistant: "
        return self.template.render(messages, tools)

    @property
    def template_reads_tools(self) -> bool:
        return self.template is not None and self.template.reads_tools

    # -- live policy ------------------------------------------------------------------
    def set_policy(self, policy: EnginePolicy) -> None:
        """Make ``policy`` the one in effect; from any thread, at once (a reference swap:
        the generation thread takes it at its next KV-store operation)."""
        self.policy = policy

    def follow_policy(self) -> EnginePolicy:
        """Generation thread: bring the store to the policy in effect (its config swapped,
        the parked KV re-leveled) if it is not there yet; returns that policy."""
        policy = self.policy
        followed = self._followed
        if policy is not followed:
            if self.prefix_cache is not None and not (
                    policy.store_config(self.prefix_cache.config) == self.prefix_cache.config
                    and policy.max_delta_ppl == followed.max_delta_ppl):
                self.prefix_cache.follow(policy)
            self._followed = policy
            self.releveled_version = policy.version
        return policy

    def evicting(self, policy: EnginePolicy) -> ContextEvictor | None:
        """The evictor for a generation under ``policy``, its window and sinks the
        policy's, each at most a quarter of the context (the room a chunk needs)."""
        evictor = self.evictor
        if evictor is None or not policy.allow_evict:
            return None
        bound = self.ctx_size // 4
        config = replace(evictor.config, recent_window=min(policy.recent_window, bound),
                         sink_tokens=min(policy.sink_tokens, bound))
        if config != evictor.config:
            evictor.config = config
        return evictor

    @property
    def allow_evict(self) -> bool:
        """Whether a prompt longer than the context is evicted into it, as of now."""
        return self.evictor is not None and self.policy.allow_evict

    # -- runs ---------------------------------------------------------------------------
    def _cold_feed(self, ids: list[int]) -> dict[str, np.ndarray]:
        """A plain (unbound) run's inputs for ``ids`` alone: one row, an empty past."""
        shape = self.kv_shape
        feed: dict[str, np.ndarray] = {
            "input_ids": np.asarray([ids], dtype=np.int64),
            "attention_mask": np.ones((1, len(ids)), dtype=np.int64)}
        empty = np.zeros((1, shape.kv_heads, 0, shape.head_dim), dtype=np.float32)
        for past_k, past_v in self._past:
            feed[past_k] = feed[past_v] = empty
        return feed

    def hidden_states(self, ids: list[int]) -> np.ndarray:
        """The final norm's output [len(ids), hidden] for ``ids`` alone, from no past and
        keeping no KV: what embeddings pool. onnxruntime runs only the nodes this output
        needs (no LM head). Any thread: ``InferenceSession.run`` is thread-safe."""
        if self.hidden_size is None:
            raise ModelError("this model's graph has no hidden_states output (prepared "
                             "before layout 3): run `inferos model prepare` again")
        try:
            (hidden,) = self.session.run(["hidden_states"], self._cold_feed(ids))
        except Exception as exc:  # onnxruntime's errors have no common base class
            raise ModelError(f"onnxruntime failed: {exc}") from exc
        return np.asarray(hidden[0], dtype=np.float32)

    def run_row(self, buffer: KvBuffer, ids: list[int], past_len: int, *,
                all_logits: bool = False) -> np.ndarray:
        """Runs ``ids`` on top of ``past_len`` cached tokens of one row, alone; the last
        position's logits [vocab], or every position's [len(ids), vocab]."""
        binding = buffer.binding
        if binding is None:
            binding = buffer.binding = bind_rows(self.session, self._kv_names, buffer.keys,
                                                 buffer.values, 1, self.kv_shape)
        binding.bind_cpu_input("input_ids", np.asarray([ids], dtype=np.int64))
        binding.bind_cpu_input("attention_mask",
                               np.ones((1, past_len + len(ids)), dtype=np.int64))
        # Our own array, so reading the logits needs no get_outputs() (61 OrtValues a step).
        logits = np.empty((1, len(ids), self._logits_width), dtype=np.float32)
        binding.bind_output("logits", "cpu", 0, np.float32, list(logits.shape),
                            logits.ctypes.data)
        self._session_run(binding)
        self._count_run((past_len + len(ids)) * self.kv_shape.bytes_per_token)
        counters = self.counters
        # The in-place check reads every output: on a binding's first run, then one run in
        # ACCOUNT_EVERY, and every run once a copy has ever been needed.
        if counters.kv_copies or buffer.checked_runs == 0 or counters.runs % ACCOUNT_EVERY == 0:
            buffer.checked_runs += 1
            self._account(buffer.keys, buffer.values, binding.get_outputs()[1:])
        return logits[0] if all_logits else logits[0, -1]

    def run_rows(self, inputs: list[int], lens: list[int]) -> np.ndarray:
        """One decode step of rows ``[0, len(inputs))`` of the batch buffer in one run:
        row r's token ``inputs[r]`` on top of its ``lens[r]`` cached tokens (right
        padding: its mask has ``lens[r] + 1`` ones). Logits [rows, vocab]."""
        width = len(inputs)
        batch = self.pool.batch
        binding = batch.binding(self.session, width, self._kv_names)
        binding.bind_cpu_input("input_ids", np.asarray(inputs, dtype=np.int64)[:, None])
        sums = np.asarray(lens, dtype=np.int64) + 1
        mask = (np.arange(int(sums.max()))[None, :] < sums[:, None]).astype(np.int64)
        binding.bind_cpu_input("attention_mask", mask)
        logits = np.empty((width, 1, self._logits_width), dtype=np.float32)
        binding.bind_output("logits", "cpu", 0, np.float32, list(logits.shape),
                            logits.ctypes.data)
        self._session_run(binding)
        self._count_run(int(sums.sum()) * self.kv_shape.bytes_per_token)
        counters = self.counters
        if counters.kv_copies or width not in self._checked_widths \
                or counters.runs % ACCOUNT_EVERY == 0:
            self._checked_widths.add(width)
            self._account([k[:width] for k in batch.keys], [v[:width] for v in batch.values],
                          binding.get_outputs()[1:])
        return logits[:, 0]

    def _session_run(self, binding: ort.IOBinding) -> None:
        try:
            self.session.run_with_iobinding(binding)
        except Exception as exc:  # onnxruntime's errors have no common base class
            raise ModelError(f"onnxruntime failed: {exc}") from exc

    def _count_run(self, kv_bytes: int) -> None:
        self.counters.runs += 1
        self.counters.kv_bytes_in_place += kv_bytes

    def _account(self, keys: list[np.ndarray], values: list[np.ndarray],
                 presents: list[ort.OrtValue]) -> None:
        """The check that IOBinding is in effect: each present output should be our own
        buffer, written in place. One that is not is copied back, and counted."""
        counters = self.counters
        counters.checked_runs += 1
        arrays = keys + values
        layers = self.kv_shape.layers
        for index, present in enumerate(presents):
            # outputs come in binding order: layer i's key, then its value
            target = arrays[index // 2 + (layers if index % 2 else 0)]
            if present.data_ptr() != target.ctypes.data:
                source = present.numpy()
                np.copyto(target[:, :, :source.shape[2]], source)
                counters.kv_copies += 1
                counters.kv_bytes_copied += source.nbytes

    def ensure_room(self, buffer: KvBuffer, need: int, evictor: ContextEvictor | None
                    ) -> None:
        if len(buffer.tokens) + need > self.ctx_size:
            assert evictor is not None, "generate() keeps within the context"
            evictor.make_room(buffer, need)

    # -- generation -----------------------------------------------------------------------
    def generate(self, prompt_ids: list[int], params: SamplingParams,
                 cancelled: Callable[[], bool] | None = None) -> Iterator[TokenEvent]:
        """Yields the generated tokens, stepping the batch scheduler on the calling thread
        (which must be the only one stepping it: the server's worker, a test, a tool).
        Raises ValueError for a prompt that is empty or leaves no room in the context
        (unless the policy's ``allow_evict``: then the context makes room by evicting, and
        a generation ends only at a stop or ``max_tokens``); ModelError when onnxruntime
        fails."""
        self.check(prompt_ids, self.allow_evict)
        return self._generate(list(prompt_ids), params, cancelled)

    def check(self, prompt_ids: list[int], evicting: bool) -> None:
        if not prompt_ids:
            raise ValueError("the prompt is empty")
        if len(prompt_ids) >= self.ctx_size and not evicting:
            raise ValueError(f"the prompt has {len(prompt_ids)} tokens; the context holds "
                             f"{self.ctx_size}, and at least one must be left to generate")
        vocab = int(self.tokenizer.get_vocab_size())
        if any(not 0 <= t < vocab for t in prompt_ids):
            raise ValueError(f"token ids must be between 0 and {vocab - 1}")

    def _generate(self, prompt: list[int], params: SamplingParams,
                  cancelled: Callable[[], bool] | None) -> Iterator[TokenEvent]:
        events: deque[TokenEvent] = deque()
        ended: list[BaseException | None] = []
        sequence, _ = self.scheduler.submit(prompt, params, events.append, ended.append,
                                            runner=False)
        try:
            while True:
                while events:
                    yield events.popleft()
                if ended:
                    if ended[0] is not None:
                        raise ended[0]
                    return
                if cancelled is not None and cancelled():
                    sequence.cancelled.set()
                self.scheduler.step()
        finally:
            if not ended:  # closed early: the row goes back before this returns
                sequence.cancelled.set()
                while not ended:
                    self.scheduler.step()

    def next_logits(self, prompt_ids: list[int]) -> np.ndarray:
        """The logits [vocab] of the token after ``prompt_ids``, computed as a generation's
        first token is (prefix reuse included); the prompt's KV is parked as a
        generation's is. For quality checks: restored KV against a cold run."""
        evictor = self.evicting(self.follow_policy())
        self.check(prompt_ids, evictor is not None)
        limit = len(prompt_ids) - 1
        buffer = self.pool.take(prompt_ids, limit)
        try:
            reuse = min(buffer.common_prefix(prompt_ids), limit) \
                if self.options.prefix_cache else 0
            buffer.keep_prefix(reuse)
            logits: np.ndarray | None = None
            step = PREFILL_CHUNK if evictor is None else min(PREFILL_CHUNK, self.ctx_size // 4)
            position = reuse  # a prompt position: eviction shortens buffer.tokens
            while position < len(prompt_ids):
                chunk = prompt_ids[position:position + step]
                self.ensure_room(buffer, len(chunk), evictor)
                logits = self.run_row(buffer, chunk, len(buffer.tokens))
                buffer.tokens.extend(chunk)
                position += len(chunk)
            assert logits is not None
            return logits
        finally:
            try:
                self.follow_policy()
            finally:
                self.pool.give_back(buffer)

    # -- accounting -------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        """Counters, pool, store and guard as JSON (engine/runtime_stats.py)."""
        return model_stats(self)

    def facts(self) -> EngineFacts:
        """What decides which policy keys apply to this model (engine/policy_ack.py)."""
        cache = self.prefix_cache
        return EngineFacts(provider=self.provider,
                           available_providers=tuple(ort.get_available_providers()),
                           prefix_cache=cache is not None, no_eviction=self.no_eviction,
                           no_calibration=cache.guard.no_calibration if cache else NO_PARKED_KV)

    def close(self) -> None:
        self.pool.clear()
        del self.session


def load_model(name_or_path: str, options: EngineOptions) -> LoadedModel:
    """Loads a prepared model by name (from the cache) or by the path of its folder."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return LoadedModel(path.name, path.resolve(), options)
    from inferos.engine.prepare import prepared_folder

    folder = prepared_folder(name_or_path)
    if folder is None:
        raise ModelError(f"'{name_or_path}' is not prepared: run "
                         f"`inferos model prepare {name_or_path}`")
    return LoadedModel(name_or_path.strip().lower(), folder, options)
