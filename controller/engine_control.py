"""The embedded engine's loopback control API, from the controller's side.

``POST /inferos/v1/policy`` carries the live policy keys (KV window, sinks, thresholds,
host pool, eviction, quality guard, scheduler, speculation) with the policy version; the
engine answers with what is now in effect (``applied``, key -> value) and what it cannot
apply (``not_applicable``, key -> reason). That answer is the read-back: a key is reported
applied only when the engine's acknowledgement lists it so.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import httpx

from inferos.controller import backend as b
from inferos.controller.backend import Outcome

POLICY_PATH = "/inferos/v1/policy"
TOKEN_HEADER = "X-Inferos-Control-Token"
WHERE = "engine control API"


class EngineControl:
    def __init__(self, base_url: str, token: str | None = None, timeout_s: float = 5.0,
                 *, api_key: str | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.api_key = api_key  # the engine's --api-key, which covers this route too
        self.timeout_s = timeout_s
        self._client: httpx.AsyncClient | None = None
        self.acked_version: int | None = None
        # The engine's versions only go up. One that outlived an earlier controller (an
        # engine behind --upstream, a restarted serve) is ahead of our policy versions: we
        # send ours shifted past its own, learnt from its 409.
        self._offset = 0

    def retarget(self, base_url: str) -> None:
        """A blue/green switch moved the engine: the next push goes to the new process."""
        self.base_url = base_url.rstrip("/")
        self.acked_version = None
        self._offset = 0

    async def push(self, live: Mapping[str, Any], version: int) -> tuple[Outcome, ...]:
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=self.timeout_s)
        headers = {TOKEN_HEADER: self.token} if self.token else {}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        try:
            for _ in range(2):
                sent = version + self._offset
                response = await self._client.post(self.base_url + POLICY_PATH,
                                                   json=b.live_payload(live, sent),
                                                   headers=headers)
                body = response.json()
                ahead = body.get("version") if isinstance(body, dict) else None
                if response.status_code != 409 or not isinstance(ahead, int):
                    break
                self._offset = ahead + 1 - version
        except (httpx.HTTPError, ValueError) as exc:
            return tuple(Outcome(k, b.NOT_APPLIED, v, where=WHERE,
                                 reason=f"the engine's control API did not answer: {exc}")
                         for k, v in live.items())
        if response.status_code != 200 or not isinstance(body, dict):
            detail = str(body)[:200] if body else response.reason_phrase
            return tuple(Outcome(k, b.NOT_APPLIED, v, where=WHERE,
                                 reason=f"the engine refused ({response.status_code}): {detail}")
                         for k, v in live.items())
        applied: dict[str, Any] = body["applied"] if isinstance(body.get("applied"),
                                                                dict) else {}
        refused: dict[str, Any] = body["not_applicable"] if isinstance(
            body.get("not_applicable"), dict) else {}
        if body.get("version") == sent:
            self.acked_version = version
        outcomes = []
        for key, value in live.items():
            if key in applied:
                outcomes.append(Outcome(key, b.APPLIED, value, applied[key], WHERE,
                                        f"acknowledged at version {body.get('version')}"))
            elif key in refused:
                outcomes.append(Outcome(key, b.NOT_APPLICABLE, value, where=WHERE,
                                        reason=str(refused[key])))
            else:
                outcomes.append(Outcome(key, b.NOT_APPLIED, value, where=WHERE,
                                        reason="the engine's acknowledgement omits it"))
        return tuple(outcomes)

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None
