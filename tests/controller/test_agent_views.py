"""What ``/v1/metrics`` and the telemetry line say of speculation: the engine's own count
when it reports one, else what the requests' timings counted, else null (never invented).

The views read only a controller's request stats and the backend's latest stats, so a
namespace holding the real ``RequestStats`` and ``BackendStats`` stands in for it here.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from inferos.controller import agent_views
from inferos.controller.backend_stats import BackendStats
from inferos.controller.request_stats import RequestStats
from inferos.proxy.record import RequestRecord


def _record(drafted: int | None, accepted: int | None) -> RequestRecord:
    return RequestRecord(route="chat/completions", model="m", status=200, outcome="ok",
                         stream=True, e2e_s=1.0, ttft_s=0.1, gaps_s=(), tpot_s=0.02,
                         prompt_tokens=10, completion_tokens=20, prompt_source="usage",
                         completion_source="usage", in_band_error=False,
                         draft_tokens=drafted, draft_accepted=accepted)


def _controller(stats: dict[str, Any] | None, *records: RequestRecord) -> Any:
    requests = RequestStats()
    for record in records:
        requests.add(record)
    return SimpleNamespace(stats=requests, metrics=SimpleNamespace(
        backend=SimpleNamespace(latest=BackendStats.parse(stats))))


def _engine(drafted: int, accepted: int) -> dict[str, Any]:
    return {"scheduler": {"speculation": {"drafted": drafted, "accepted": accepted,
                                          "accept_rate": None, "enabled": True}}}


def test_the_engines_overall_count_is_the_figure() -> None:
    # The engine counts every sequence since it started, not only the window's requests.
    controller = _controller(_engine(200, 150), _record(10, 1))
    assert agent_views.spec_accept(controller) == 0.75


def test_an_engine_that_drafted_nothing_is_null() -> None:
    assert agent_views.spec_accept(_controller(_engine(0, 0), _record(10, 5))) is None


def test_a_backend_without_a_report_counts_the_requests_timings() -> None:
    # llama.cpp's server started speculating: draft_n in each request's timings.
    controller = _controller({"kv_levels": {}}, _record(10, 5), _record(30, 25),
                             _record(None, None), _record(0, 0))
    assert agent_views.spec_accept(controller) == 30 / 40
    assert controller.stats.overall().spec_accept == 30 / 40


def test_lemonade_and_a_plain_llamacpp_server_are_null() -> None:
    assert agent_views.spec_accept(_controller(None)) is None
    assert agent_views.spec_accept(_controller(None, _record(None, None))) is None
