"""The one loaded model of the engine server, and the one thread that runs it.

``ModelSlot`` holds at most one ``LoadedModel`` (Lemonade's ``max_models.llm`` is 1) and
a single worker thread on which every load, unload and generation runs, so ONNX Runtime
never sees two of them at once. ``lock`` serializes callers on the event loop: a handler
takes it for the whole of its load-tokenize-generate sequence, so the model cannot change
under a request. Batching several sequences is a later step; this is the seam for it.

Cancellation: ``stream`` sets the generation's cancelled flag and waits for the worker to
close the core's iterator when its consumer stops early (stop string found, client gone),
so the KV buffer is back in the pool before the next request starts.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncGenerator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from inferos.engine.load_options import already_in_effect, in_effect
from inferos.engine.runtime import EngineOptions, LoadedModel, SamplingParams, TokenEvent

Loader = Callable[[str, EngineOptions], LoadedModel]


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


_END = _End()


class ModelSlot:
    def __init__(self, loader: Loader) -> None:
        self._loader = loader
        self.lock = asyncio.Lock()
        self.state: LoadedState | None = None
        self.busy = False
        self.loads = 0
        self._executor: ThreadPoolExecutor | None = None

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
        self.loads += 1
        self.state = LoadedState(
            model=model, name=name, source=source,
            options=in_effect(model.options, model.max_context, model.provider),
            loaded_at=time.time(), load_number=self.loads)
        return self.state, True

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
