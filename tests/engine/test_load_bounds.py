"""Every ``/load`` value the engine acts on has an upper bound: past it, a 400 naming the
field, and the model in effect is not touched (engine/load_options.py). Issue 11, item 2:
``threads`` had none."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from inferos.engine.api_errors import ApiError
from inferos.engine.api_requests import MAX_MODEL_NAME, parse_chat, parse_load
from inferos.engine.load_options import MAX_CTX_SIZE, MAX_NAME_CHARS, check_bounds, max_threads
from tests.backends import RunningServer
from tests.engine.engine_process import MODEL

PAST_THE_BOUNDS = [
    ({"threads": max_threads() + 1}, "threads"),
    ({"threads": 10**6}, "threads"),
    ({"ctx_size": MAX_CTX_SIZE + 1}, "ctx_size"),
    ({"ctx_size": 10**30}, "ctx_size"),
    ({"provider": "x" * (MAX_NAME_CHARS + 1)}, "provider"),
    ({"kv_precision": "x" * 10_000}, "kv_precision"),
    ({"graph_optimization": "x" * (MAX_NAME_CHARS + 1)}, "graph_optimization"),
]


@pytest.mark.parametrize(("fields", "param"), PAST_THE_BOUNDS)
def test_a_value_past_its_bound_is_a_400_naming_it(fields: dict[str, Any], param: str) -> None:
    with pytest.raises(ApiError) as refused:
        check_bounds(parse_load({"model_name": "m", **fields}))
    assert refused.value.status == 400 and refused.value.param == param


def test_values_at_their_bounds_pass() -> None:
    check_bounds(parse_load({"model_name": "m", "threads": max_threads(),
                             "ctx_size": MAX_CTX_SIZE, "provider": "x" * MAX_NAME_CHARS}))


@pytest.mark.model
@pytest.mark.parametrize(("fields", "param"), PAST_THE_BOUNDS[:3])
def test_the_engine_refuses_them_and_keeps_what_is_loaded(engine: RunningServer,
                                                         fields: dict[str, Any],
                                                         param: str) -> None:
    before = httpx.get(engine.url + "/api/v1/health", timeout=60).json()["all_models_loaded"]
    response = httpx.post(engine.url + "/api/v1/load", json={"model_name": MODEL, **fields},
                          timeout=300)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == param and error["code"] == "invalid_value"
    assert set(error) == {"message", "type", "param", "code"}
    after = httpx.get(engine.url + "/api/v1/health", timeout=60).json()["all_models_loaded"]
    assert [m["recipe_options"] for m in after] == [m["recipe_options"] for m in before]


def test_a_model_name_past_its_bound_is_a_400_naming_it() -> None:
    parse_load({"model_name": "m" * MAX_MODEL_NAME})
    with pytest.raises(ApiError) as refused:
        parse_load({"model_name": "m" * (MAX_MODEL_NAME + 1)})
    assert refused.value.status == 400 and refused.value.param == "model_name"
    with pytest.raises(ApiError) as refused:
        parse_chat({"model": "m" * 100_000, "messages": [{"role": "user", "content": "x"}]})
    assert refused.value.status == 400 and refused.value.param == "model"
