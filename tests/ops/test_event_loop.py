"""FLOWLEDGER_EVENT_LOOP: which loop the services run on (flowledger_core/server/event_loop.py).

The processes themselves run on the default loop in every process test (tests/*/test_process*);
this checks the choice: each value runs a coroutine on the loop it names, and a bad one is a
settings error that names the variable.
"""

from __future__ import annotations

import asyncio

import pytest
import uvloop

from flowledger_core.server.env import SettingsError
from flowledger_core.server.event_loop import VARIABLE, default_loop, loop_runner


def _loop_type(runner_env: dict[str, str]) -> type[asyncio.AbstractEventLoop]:
    seen: list[type[asyncio.AbstractEventLoop]] = []

    async def probe() -> None:
        seen.append(type(asyncio.get_running_loop()))

    loop_runner(runner_env)(probe())
    return seen[0]


def test_the_default_is_uvloop_where_installed() -> None:
    assert default_loop() == "uvloop"
    assert issubclass(_loop_type({}), uvloop.Loop)


def test_asyncio_is_the_standard_loop() -> None:
    assert not issubclass(_loop_type({VARIABLE: "asyncio"}), uvloop.Loop)
    assert issubclass(_loop_type({VARIABLE: "uvloop"}), uvloop.Loop)


@pytest.mark.parametrize("value", ["tokio", "UVLOOP", " asyncio"])
def test_a_bad_choice_names_the_variable(value: str) -> None:
    with pytest.raises(SettingsError) as err:
        loop_runner({VARIABLE: value})
    assert err.value.variable == VARIABLE
    assert repr(value) in str(err.value)
