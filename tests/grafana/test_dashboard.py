"""Every panel of the Grafana dashboard has data: the real Prometheus scrapes a running
agent while traffic flows through the proxy, and each panel's PromQL is run against it."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import aiohttp
import pytest

from inferos.controller.agent import Agent
from tests.controller.conftest import controller_settings, policy, proxy_settings
from tests.engine.engine_process import MODEL, engine_process, prepared_model
from tests.grafana.prometheus_server import prometheus, query, wait_for_scrapes

DASHBOARD = Path(__file__).resolve().parents[2] / "grafana" / "dashboards" / "inferos.json"


def panel_queries() -> list[tuple[str, str]]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [(panel["title"], target["expr"]) for panel in dashboard["panels"]
            for target in panel["targets"]]


def concrete(expr: str) -> str:
    """What Grafana sends with every variable at "All" and a 1-minute rate interval."""
    return (expr.replace("$__rate_interval", "1m").replace("$model", ".*")
            .replace("$instance", ".*"))


def test_dashboard_variables_and_queries_use_only_exported_series() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    names = {v["name"] for v in dashboard["templating"]["list"]}
    assert {"model", "instance", "datasource"} <= names
    for _, expr in panel_queries():
        assert "inferos_" in expr or "gen_ai_" in expr or "process_" in expr, expr


async def _traffic(agent: Agent) -> None:
    chat = {"model": MODEL, "max_tokens": 8, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True},
            "messages": [{"role": "user", "content": "Say hi."}]}
    async with aiohttp.ClientSession() as client:
        for _ in range(3):
            async with client.post(agent.proxy.proxy_url + "/v1/chat/completions",
                                   json=chat) as resp:
                assert resp.status == 200
                await resp.read()
        async with client.get(agent.proxy.proxy_url + "/v1/no-such-route") as resp:
            assert resp.status == 404  # an error for the errors panel


@pytest.mark.model
async def test_every_panel_returns_data(tmp_path: Path) -> None:
    """On the embedded engine, whose stats feed the KV-level and prefix-cache panels."""
    prepared_model()
    with engine_process(tmp_path) as engine:
        await _check_panels(engine.url, tmp_path)


async def _check_panels(upstream: str, tmp_path: Path) -> None:
    async with Agent(proxy_settings(upstream), policy("balanced"),
                     controller_settings(tmp_path)) as agent:
        target = agent.proxy.admin_url.removeprefix("http://")
        with prometheus(tmp_path, target) as prom:
            await asyncio.to_thread(wait_for_scrapes, prom, 1)
            await _traffic(agent)
            await asyncio.to_thread(wait_for_scrapes, prom, 3)
            await _traffic(agent)
            await asyncio.to_thread(wait_for_scrapes, prom, 2)
            empty = []
            for title, expr in panel_queries():
                if not await asyncio.to_thread(query, prom, concrete(expr)):
                    empty.append(f"{title}: {expr}")
            assert not empty, "panels with no data:\n" + "\n".join(empty)
