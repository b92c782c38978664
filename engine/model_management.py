"""Lemonade's model management and server control on the engine: ``pull``, ``delete``,
``halt`` and ``log-level``, in Lemonade's shapes.

- ``pull {"model_name", "stream"}``: nothing is downloaded here, so pulling a model means
  preparing it from the package that ships it (engine/prepare.py: GGUF to transformers,
  to ONNX, then the KV calibration), or nothing when it is prepared already. Streamed, it
  sends Lemonade's ``event: progress`` lines, one per step (``file`` names the step,
  ``file_index``/``total_files`` count the steps, ``percent`` the steps done;
  ``bytes_downloaded`` and ``bytes_total`` are 0, which is what is downloaded; the last
  one, at 100, names the last step run or "prepared already"), then ``event: complete``
  or ``event: error``. A name the engine cannot prepare, or a request
  to register a new model (``checkpoint``/``recipe``), is a 404/400 that says pull is not
  available for it. A preparation goes on if its client leaves: its result is cached.
- ``delete {"model_name"}``: unloads it when loaded, then removes its prepared folder
  (``GET models`` no longer lists it; ``pull`` prepares it again). A model served from a
  folder given by path is the user's and is never removed.
- ``halt``: answers, then stops the engine process as SIGTERM would (generations in flight
  are cancelled). Under ``inferos serve`` the supervisor starts the engine again, as after
  any exit; serve itself stops on its own signal.
- ``log-level {"level"}``: debug | info | warning | error (Lemonade's; ``trace`` is taken
  as debug) for the engine's loggers, at once.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import shutil
from pathlib import Path
from typing import Any

from aiohttp import web

from inferos.engine import prepare
from inferos.engine.api_errors import ApiError, invalid_param
from inferos.engine.api_requests import json_object, required_model_name
from inferos.engine.engine_state import ENGINE, EngineState
from inferos.engine.generation_admission import event_stream
from inferos.errors import ModelError

log = logging.getLogger(__name__)

LOG_LEVELS = {"trace": logging.DEBUG, "debug": logging.DEBUG, "info": logging.INFO,
              "warning": logging.WARNING, "error": logging.ERROR}
HALT_DELAY_S = 0.2  # lets the answer reach the client before the listener closes


def _preparable(name: str) -> str:
    key = name.strip().lower()
    if key not in prepare.SOURCES:
        raise ApiError(404, f"pull is not available for '{name}': this engine downloads "
                            "nothing and can prepare only "
                            f"{', '.join(prepare.SOURCES)} (from the package that ships it).",
                       code="model_not_found", param="model_name")
    return key


def _progress_event(kind: str, payload: dict[str, Any]) -> bytes:
    return f"event: {kind}\ndata: {json.dumps(payload)}\n\n".encode()


def _step_payload(index: int, done: bool) -> dict[str, Any]:
    total = len(prepare.STEPS)
    return {"file": prepare.STEPS[index], "file_index": index + 1, "total_files": total,
            "bytes_downloaded": 0, "bytes_total": 0,
            "percent": round(100 * (index + (1 if done else 0)) / total)}


async def pull(request: web.Request) -> web.StreamResponse:
    body = await json_object(request)
    name = required_model_name(body)
    if body.get("checkpoint") is not None or body.get("recipe") is not None:
        raise invalid_param("checkpoint", "registering a new model (checkpoint, recipe) is "
                                          "not available on this engine: it downloads nothing")
    key = _preparable(name)
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise invalid_param("stream", "'stream' must be true or false")
    loop = asyncio.get_running_loop()
    events: asyncio.Queue[int | None] = asyncio.Queue()  # steps begun; None: it ended

    def step_started(index: int) -> None:
        loop.call_soon_threadsafe(events.put_nowait, index)

    # An executor future, not a task: it ends with its thread, whether or not the
    # handler is still there to see it (the preparation is cached either way).
    job = loop.run_in_executor(None, functools.partial(
        prepare.ensure_prepared, key, progress=log.info, on_step=step_started))
    job.add_done_callback(lambda _: loop.call_soon(events.put_nowait, None))
    if not stream:
        try:
            await asyncio.shield(job)
        except ModelError as exc:
            raise ApiError(500, f"preparing '{key}' failed: {exc}", kind="server_error",
                           code="pull_failed") from exc
        log.info("pull %s: prepared", key)
        return web.json_response({"status": "success", "message": f"Installed model: {key}"})
    response = event_stream()
    await response.prepare(request)
    current: int | None = None
    while (step := await events.get()) is not None:
        if current is not None:
            await response.write(_progress_event("progress", _step_payload(current, True)))
        current = step
        await response.write(_progress_event("progress", _step_payload(step, False)))
    try:
        job.result()
    except ModelError as exc:
        await response.write(_progress_event("error", {"error": f"preparing '{key}' failed: "
                                                                f"{exc}"}))
        await response.write_eof()
        return response
    total = len(prepare.STEPS)
    # The last step that ran, done; or, when none had to, the model as it already was.
    # 100 either way: a step that did not run was done before.
    last = {"file": "prepared already", "file_index": total, "total_files": total,
            "bytes_downloaded": 0, "bytes_total": 0} if current is None \
        else _step_payload(current, True)
    await response.write(_progress_event("progress", {**last, "percent": 100}))
    await response.write(_progress_event("complete", {"file_index": total,
                                                      "total_files": total, "percent": 100}))
    await response.write_eof()
    log.info("pull %s: prepared", key)
    return response


def _removable(engine: EngineState, name: str) -> tuple[str, Path]:
    entry = engine.catalog.find(name)
    if entry is None or not entry.prepared or entry.folder is None:
        raise ApiError(404, f"The model '{name}' is not prepared here, so there is nothing to "
                            "delete.", code="model_not_found", param="model_name")
    if entry.id.lower() not in prepare.SOURCES:
        raise invalid_param("model_name", f"'{entry.id}' is served from a folder given by "
                                          "path; the engine does not delete the user's folders")
    return entry.id, entry.folder


async def delete(request: web.Request) -> web.Response:
    engine = request.app[ENGINE]
    name = required_model_name(await json_object(request))
    model_id, folder = _removable(engine, name)
    async with engine.slot.lock:
        if engine.names_loaded(model_id):
            await engine.slot.unload()
        # Renamed first, so the catalog never sees a half-removed folder as prepared.
        doomed = folder.with_name(f".deleting-{folder.name}")
        try:
            folder.rename(doomed)
        except OSError as exc:
            raise ApiError(500, f"could not delete '{model_id}': {exc}", kind="server_error",
                           code="delete_failed") from exc
    await asyncio.to_thread(shutil.rmtree, doomed, True)
    log.info("delete %s: removed its prepared folder", model_id)
    return web.json_response({"status": "success", "message": f"Deleted model: {model_id}"})


async def halt(request: web.Request) -> web.Response:
    engine = request.app[ENGINE]
    log.info("halt requested: stopping")
    asyncio.get_running_loop().call_later(HALT_DELAY_S, engine.halted.set)
    return web.json_response({"status": "success", "message": "Server halting"})


async def log_level(request: web.Request) -> web.Response:
    level = (await json_object(request)).get("level")
    if not isinstance(level, str) or level.lower() not in LOG_LEVELS:
        raise invalid_param("level", "'level' must be one of "
                                     f"{', '.join(LOG_LEVELS)}")
    logging.getLogger("inferos").setLevel(LOG_LEVELS[level.lower()])
    log.warning("log level set to %s", level.lower())
    return web.json_response({"status": "success", "level": level.lower()})
