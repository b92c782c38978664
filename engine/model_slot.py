"""The one loaded model of the engine server, and the one thread that runs it.

``ModelSlot`` holds at most one ``LoadedModel`` (Lemonade's ``max_models.llm`` is 1) and
a single worker thread on which every load, unload and generation runs, so ONNX Runtime
never sees two of them at once. ``lock`` serializes callers on the event loop: a handler
takes it for the whole of its load-tokenize-generate sequence, so the model cannot change
under a request. Batching several sequences is a later step; this is the seam for it.

Live policy: ``policy`` is the ``EnginePolicy`` in effect, which outlives loads (a model
loaded later takes it). ``set_policy`` answers at once, whatever the worker is doing: it
swaps the loaded model's policy (a reference the worker reads at its next KV-store
operation) and queues ``follow_policy`` on the worker, which re-levels the parked KV as
soon as the running generation, if any, has finished. It never touches the store from
the event loop.

Cancellation: ``stream`` sets the generation's cancelled flag and waits for the worker to
close the core's iterator when its consumer stops early (stop string found, client gone),
so the KV buffer is back in the pool before the next request starts.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncGenerator, Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from inferos.engine.engine_policy import EnginePolicy
from inferos.engine.load_options import already_in_effect, in_effect
from inferos.engine.runtime import EngineOptions, LoadedModel, SamplingParams, TokenEvent

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


class _End:
    pass


def _log_failure(future: Future[Any]) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.error("re-leveling the parked KV failed", exc_info=future.exception())


_END = _End()


class ModelSlot:
    def __init__(self, loader: Loader, policy: EnginePolicy | None = None) -> None:
        self._loader = loader
        self.lock = asyncio.Lock()
        self.state: LoadedState | None = None
        self.busy = False
        self.loads = 0
        self.policy = policy if policy is not None else EnginePolicy()
        self._executor: ThreadPoolExecutor | None = None
        self._following: Future[Any] | None = None

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
        current, self.state = self.state, None
        if current is not None:
            await self._run(current.model.close)

    async def stream(self, model: LoadedModel, prompt_ids: list[int],
                     params: SamplingParams) -> AsyncGenerator[TimedEvent, None]:
        """The core's generation, run on the worker thread, as async events.

        Raises what ``generate`` raises (ValueError, ModelError). Use it inside
        ``contextlib.aclosing`` so that stopping early cancels the generation at once.
        """
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[TimedEvent | BaseException | _End] = asyncio.Queue()
        cancelled = threading.Event()

        def put(item: TimedEvent | BaseException | _End) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, item)

        def produce() -> None:
            events: Iterator[TokenEvent] | None = None
            try:
                events = model.generate(prompt_ids, params, cancelled=cancelled.is_set)
                for event in events:
                    put(TimedEvent(event, time.perf_counter()))
                    if cancelled.is_set():
                        break
            except BaseException as exc:  # handed to the event loop, raised there
                put(exc)
            finally:
                if events is not None and hasattr(events, "close"):
                    events.close()  # returns the KV buffer to the pool
                put(_END)

        self.busy = True
        worker = loop.run_in_executor(self._executor, produce)
        try:
            while True:
                item = await queue.get()
                if isinstance(item, _End):
                    break
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            cancelled.set()
            try:
                # Shielded: a second cancellation must not skip waiting for the buffer's return.
                await asyncio.shield(worker)
            finally:
                self.busy = False
