"""The one loaded model of the engine server, and the one thread that runs it.

``ModelSlot`` holds at most one ``LoadedModel`` (Lemonade's ``max_models.llm`` is 1) and
a single worker thread on which every load, unload and generation step runs, so ONNX
Runtime never sees two of them at once. Generations are batched: each request is
submitted to the model's ``BatchScheduler`` (engine/batch_scheduler.py), and the worker
runs ``run_until_idle`` while any sequence is left, so requests join and leave a running
batch between steps.

``lock`` serializes what changes the model: a handler takes it to resolve (and, on demand,
load) the model it means and to be admitted (``admit``), then lets it go and generates
without it. ``load``/``unload`` (caller holds the lock) first wait until every admitted
generation has ended (``drained``), so the model cannot change under a request, and a new
request waits at the lock meanwhile.

Admission is bounded: at most ``scheduler.max_batch`` rows plus ``scheduler.max_queue``
waiting generations; past that ``admit`` raises ``QueueFull`` (an OpenAI-shaped 503 with
``Retry-After``), before any response has started.

Live policy: ``policy`` is the ``EnginePolicy`` in effect, which outlives loads (a model
loaded later takes it). ``set_policy`` answers at once, whatever the worker is doing: it
swaps the loaded model's policy (a reference the scheduler reads at its next step, where it
also re-levels the parked KV) and queues ``follow_policy`` on the worker, for when no
generation is stepping.
It never touches the store from the event loop.

Cancellation: ``stream`` sets the sequence's cancelled flag when its consumer stops early
(stop string found, client gone) and waits for the scheduler to release it, so its row is
back in the pool, its KV parked, before ``stream`` returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator, Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from inferos.engine.engine_policy import EnginePolicy
from inferos.engine.load_options import already_in_effect, in_effect
from inferos.engine.runtime import EngineOptions, LoadedModel
from inferos.engine.sampling_params import SamplingParams, TokenEvent

Loader = Callable[[str, EngineOptions], LoadedModel]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoadedState:
    """A loaded model as clients see it: its id, its options in effect, when and which load."""

    model: LoadedModel
    name: str
    source: str
    options: EngineOptions
    loaded_at: float
    load_number: int

    @property
    def ctx_size(self) -> int:
        return self.options.ctx_size

    @property
    def checkpoint(self) -> Path:
        return self.model.folder


@dataclass(frozen=True)
class TimedEvent:
    """A token event and the ``perf_counter`` time at which the worker received it."""

    event: TokenEvent
    at: float


class QueueFull(Exception):
    """Every row is busy and the queue is full; ``retry_after_s``: a hint for the client."""

    def __init__(self, waiting: int, retry_after_s: int) -> None:
        super().__init__(f"{waiting} generations are running or waiting")
        self.waiting = waiting
        self.retry_after_s = retry_after_s


@dataclass(frozen=True)
class _End:
    error: BaseException | None


def _log_failure(future: Future[Any]) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.error("re-leveling the parked KV failed", exc_info=future.exception())



class ModelSlot:
    def __init__(self, loader: Loader, policy: EnginePolicy | None = None) -> None:
        self._loader = loader
        self.lock = asyncio.Lock()
        self.state: LoadedState | None = None
        self.loads = 0
        self.policy = policy if policy is not None else EnginePolicy()
        self._executor: ThreadPoolExecutor | None = None
        self._following: Future[Any] | None = None
        self._admitted = 0
        self._drained = asyncio.Event()
        self._drained.set()

    def start(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inferos-engine")

    async def stop(self) -> None:
        """Unloads the model and ends the worker thread (waits for a running generation,
        which its cancelled flag has already stopped when its handler was cancelled)."""
        if self._executor is None:
            return
        if self.state is not None:
            await self._run(self.state.model.close)
            self.state = None
        self._executor.shutdown(wait=True)
        self._executor = None

    async def _run(self, fn: Callable[..., Any], *args: Any) -> Any:
        assert self._executor is not None, "ModelSlot.start() was not called"
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def is_in_effect(self, name: str, wanted: EngineOptions) -> bool:
        """True when ``name`` is loaded and loading it with ``wanted`` would change nothing."""
        current = self.state
        return current is not None and current.name == name and already_in_effect(
            wanted, current.options, current.model.max_context)

    async def load(self, name: str, source: str, wanted: EngineOptions) -> tuple[LoadedState, bool]:
        """Makes ``name`` the loaded model with ``wanted`` options; returns the state and
        whether a load happened (False: it was already loaded so). Caller holds ``lock``."""
        if self.is_in_effect(name, wanted):
            assert self.state is not None
            return self.state, False
        current = self.state
        if current is not None:
            await self._drained.wait()
            self.state = None
            await self._run(current.model.close)
        model: LoadedModel = await self._run(self._loader, source, wanted)
        model.set_policy(self.policy)  # nothing is parked yet: its first save follows it
        self.loads += 1
        self.state = LoadedState(
            model=model, name=name, source=source,
            options=in_effect(model.options, model.max_context, model.provider),
            loaded_at=time.time(), load_number=self.loads)
        return self.state, True

    def set_policy(self, policy: EnginePolicy) -> None:
        """Make ``policy`` the one in effect now; the parked KV follows on the worker."""
        self.policy = policy
        state = self.state
        if state is None or self._executor is None:
            return
        state.model.set_policy(policy)
        queued = self._following
        if queued is None or queued.running() or queued.done():
            # One queued follow suffices: it reads the newest policy when it starts.
            self._following = self._executor.submit(state.model.follow_policy)
            self._following.add_done_callback(_log_failure)

    def releveled_version(self) -> int:
        """The policy version the parked KV has been re-leveled to (with no model loaded,
        nothing is parked: the version in effect)."""
        state = self.state
        return state.model.releveled_version if state is not None else self.policy.version

    async def unload(self) -> None:
        """Closes the loaded model, if any. Caller holds ``lock``."""
        await self._drained.wait()
        current, self.state = self.state, None
        if current is not None:
            await self._run(current.model.close)

    @property
    def busy(self) -> bool:
        return self._admitted > 0

    @property
    def admitted(self) -> int:
        """Generations admitted and not ended: running, prefilling or waiting for a row."""
        return self._admitted

    @contextlib.contextmanager
    def admit(self) -> Iterator[None]:
        """Counts a generation in for its whole life; QueueFull when the rows and the
        queue are all taken. Enter it with ``lock`` held (a load waits for it to end)."""
        policy = self.policy
        if self._admitted >= policy.max_batch + policy.max_queue:
            waiting = self._admitted
            # Roughly one step per waiting row's worth of tokens: a hint, not a promise.
            raise QueueFull(waiting, retry_after_s=max(1, min(30, waiting // policy.max_batch)))
        self._admitted += 1
        self._drained.clear()
        try:
            yield
        finally:
            self._admitted -= 1
            if self._admitted == 0:
                self._drained.set()

    def scheduler_stats(self) -> dict[str, Any] | None:
        state = self.state
        if state is None:
            return None
        policy = self.policy
        stats = state.model.scheduler.stats(policy.max_batch, policy.max_queue)
        stats["admitted"] = self._admitted
        return stats

    async def stream(self, model: LoadedModel, prompt_ids: list[int],
                     params: SamplingParams) -> AsyncGenerator[TimedEvent, None]:
        """The generation, stepped by the model's scheduler on the worker thread, as
        async events. Raises what the core raises (ValueError, ModelError). Use it inside
        ``contextlib.aclosing`` so that stopping early cancels the generation at once."""
        assert self._executor is not None, "ModelSlot.start() was not called"
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[TimedEvent | _End] = asyncio.Queue()

        def sink(event: TokenEvent) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, TimedEvent(event, time.perf_counter()))

        def on_release(error: BaseException | None) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, _End(error))

        scheduler = model.scheduler
        sequence, start = scheduler.submit(prompt_ids, params, sink, on_release)
        if start:
            self._executor.submit(scheduler.run_until_idle).add_done_callback(_log_failure)
        ended = False
        try:
            while True:
                item = await queue.get()
                if isinstance(item, _End):
                    ended = True
                    if item.error is not None:
                        raise item.error
                    break
                yield item
        finally:
            if not ended:
                sequence.cancelled.set()
                # Shielded: a second cancellation must not skip waiting for the row's return.
                await asyncio.shield(self._released(queue))

    @staticmethod
    async def _released(queue: asyncio.Queue[TimedEvent | _End]) -> None:
        while not isinstance(await queue.get(), _End):
            pass
