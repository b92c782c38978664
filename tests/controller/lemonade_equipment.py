"""Test equipment, not a backend: a server with Lemonade's control surface (health, load,
unload, halt, stats, models) that answers as a given Lemonade version does, so tests can
check the controller's capability detection, verification and manners.

- ``flavor="python"``: the Python server (<= v8.1.12): health has no ``version`` and no
  ``all_models_loaded``; ``/load`` takes only ``model_name`` and ignores everything else.
- ``flavor="cpp"``: health with ``version`` and ``all_models_loaded[].recipe_options``;
  ``/load`` applies the options named in ``honours`` (``ctx_size``, ``llamacpp_args``) and
  echoes ``llamacpp_args`` only when ``echoes_args``.

Generations stream a few SSE chunks with ``usage`` whose ``prompt_tokens`` is the number
the request's ``inferos_test_prompt_tokens`` field names (default 8): the equipment's way to
stand for prompts of a given length. A request with ``inferos_test_hold: true`` streams
its first chunk and then waits for ``release``. Every ``/load`` body is recorded.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from aiohttp import web

from tests.local_server import serve_on_free_port


class EquipmentLemonade:
    def __init__(self, flavor: str = "cpp", *, model: str = "Qwen2.5-0.5B-Instruct-GGUF",
                 ctx_size: int = 4096, honours: tuple[str, ...] = ("ctx_size",),
                 echoes_args: bool = False, load_s: float = 0.2) -> None:
        self.flavor = flavor
        self.model: str | None = model
        self.ctx_size = ctx_size
        self.llamacpp_args = ""
        self.honours = honours
        self.echoes_args = echoes_args
        self.load_s = load_s
        self.loads: list[dict[str, Any]] = []
        self.halts = 0
        self.release = asyncio.Event()
        self.holding = 0
        self.app = web.Application()
        for prefix in ("/api/v1", "/api/v0"):
            r = self.app.router
            r.add_get(f"{prefix}/health", self.health)
            r.add_post(f"{prefix}/load", self.load)
            r.add_post(f"{prefix}/unload", self.unload)
            r.add_post(f"{prefix}/halt", self.halt)
            r.add_get(f"{prefix}/stats", self.stats)
            r.add_get(f"{prefix}/models", self.models)
            r.add_post(f"{prefix}/chat/completions", self.chat)
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> None:
        self._runner, self.url = await serve_on_free_port(self.app)

    async def stop(self) -> None:
        self.release.set()
        if self._runner is not None:
            await self._runner.cleanup()

    async def __aenter__(self) -> EquipmentLemonade:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def health(self, request: web.Request) -> web.Response:
        if self.flavor == "python":
            return web.json_response({"status": "ok", "model_loaded": self.model,
                                      "checkpoint_loaded": f"/models/{self.model}"})
        options: dict[str, Any] = {"ctx_size": self.ctx_size}
        if self.echoes_args:
            options["llamacpp_args"] = self.llamacpp_args
        loaded = [] if self.model is None else [{
            "model_name": self.model, "checkpoint": f"/models/{self.model}",
            "recipe": "llamacpp", "recipe_options": options, "device": "cpu", "type": "llm"}]
        return web.json_response({"status": "ok", "version": "9.1.4",
                                  "model_loaded": self.model, "all_models_loaded": loaded,
                                  "max_models": {"llm": 1}})

    async def load(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.loads.append(body)
        await asyncio.sleep(self.load_s)  # the model reloads
        self.model = body["model_name"]
        if self.flavor == "cpp":
            if "ctx_size" in self.honours and isinstance(body.get("ctx_size"), int):
                self.ctx_size = body["ctx_size"]
            if "llamacpp_args" in self.honours and isinstance(body.get("llamacpp_args"), str):
                self.llamacpp_args = body["llamacpp_args"]
        return web.json_response({"status": "success", "model_name": self.model})

    async def unload(self, request: web.Request) -> web.Response:
        self.model = None
        return web.json_response({"status": "success",
                                  "message": "All models unloaded successfully"})

    async def halt(self, request: web.Request) -> web.Response:
        self.halts += 1
        return web.json_response({"status": "success"})

    async def stats(self, request: web.Request) -> web.Response:
        return web.json_response({"time_to_first_token": 0.01, "tokens_per_second": 100.0})

    async def models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": self.model}]})

    async def chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        prompt = int(body.get("inferos_test_prompt_tokens", 8))
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(b'data: {"choices":[{"delta":{"content":"a"}}]}\n\n')
        if body.get("inferos_test_hold"):
            self.holding += 1
            try:
                await self.release.wait()
            finally:
                self.holding -= 1
        for _ in range(3):
            await resp.write(b'data: {"choices":[{"delta":{"content":"b"}}]}\n\n')
        usage = {"prompt_tokens": prompt, "completion_tokens": 4,
                 "total_tokens": prompt + 4}
        await resp.write(b"data: " + json.dumps({"choices": [{"delta": {},
                                                              "finish_reason": "stop"}],
                                                 "usage": usage}).encode() + b"\n\n")
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp
