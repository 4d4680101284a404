"""The suite's async tests really run on both event loops (conftest.EVENT_LOOPS).

Production runs uvloop (``streamd.daemon``); the tests also run on asyncio's own loop,
which is what a library user or a debugger gets. The test id names the loop.
"""

from __future__ import annotations

import asyncio

import pytest
import uvloop

from conftest import EVENT_LOOPS


def _loop_in_id(request: pytest.FixtureRequest) -> str:
    return request.node.callspec.id.split("-")[0]


async def test_each_async_test_runs_on_the_loop_its_id_names(request: pytest.FixtureRequest) -> None:
    loop = asyncio.get_running_loop()
    assert _loop_in_id(request) in EVENT_LOOPS
    assert isinstance(loop, uvloop.Loop) == (_loop_in_id(request) == "uvloop"), (request.node.name, loop)


@pytest.mark.parametrize("n", [1])
async def test_the_loop_comes_first_in_the_id(request: pytest.FixtureRequest, n: int) -> None:
    assert request.node.callspec.id in {f"{name}-{n}" for name in EVENT_LOOPS}


@pytest.mark.asyncio(loop_factories=["asyncio"])
async def test_a_test_can_ask_for_one_loop(request: pytest.FixtureRequest) -> None:
    assert request.node.name == "test_a_test_can_ask_for_one_loop"  # one loop: no id, no second run
    assert not isinstance(asyncio.get_running_loop(), uvloop.Loop)


def test_sync_tests_run_once(request: pytest.FixtureRequest) -> None:
    assert not hasattr(request.node, "callspec")
