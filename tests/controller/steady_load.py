"""Test equipment: a client that streams chat requests back to back until told to stop,
recording 200 for each complete stream ([DONE] seen) and the failure code otherwise."""

from __future__ import annotations

import asyncio

import aiohttp


async def steady_load(url: str, stop: asyncio.Event, results: list[int], model: str,
                      max_tokens: int = 8) -> None:
    body = {"model": model, "max_tokens": max_tokens, "temperature": 0, "stream": True,
            "messages": [{"role": "user", "content": "Say hello."}]}
    async with aiohttp.ClientSession() as client:
        while not stop.is_set():
            try:
                async with client.post(url, json=body) as resp:
                    text = await resp.text()
                    ok = resp.status == 200 and "[DONE]" in text
                    results.append(200 if ok else resp.status or 599)
            except aiohttp.ClientError:
                results.append(599)
