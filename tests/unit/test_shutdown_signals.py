"""How ``python -m app serve`` holds shutdown signals back until the app has shut down."""

from __future__ import annotations

import signal

import pytest
import uvicorn

from app.__main__ import _Server


def run(
    steps: list[str],
    *,
    first_signal: bool = False,
    second_signal: bool = False,
    fails: bool = False,
) -> None:
    """What ``main`` does around uvicorn: serve, then shut the app down."""
    serving = _Server(
        uvicorn.Config(app=lambda *_: None), on_exit=lambda: steps.append("stopped admitting")
    )
    with serving.deferring_signals():
        with serving.capture_signals():
            if first_signal:
                signal.raise_signal(signal.SIGINT)  # Ctrl-C while serving: uvicorn's, held
            steps.append("served")
        if second_signal:
            signal.raise_signal(signal.SIGINT)  # a second Ctrl-C while the app drains: noted
        if fails:
            raise RuntimeError("the lifespan failed")
        steps.append("shut down")


def test_a_signal_while_the_app_shuts_down_is_raised_once_it_has() -> None:
    before = signal.getsignal(signal.SIGINT)
    steps: list[str] = []
    with pytest.raises(KeyboardInterrupt):  # SIGINT's own handler, at the very end
        run(steps, second_signal=True)
    assert steps == ["served", "shut down"]
    assert signal.getsignal(signal.SIGINT) is before


def test_a_signal_while_serving_stops_admitting_at_once_and_is_raised_once_at_the_end() -> None:
    raised: list[int] = []
    before = signal.signal(signal.SIGINT, lambda sig, _: raised.append(sig))  # the supervisor's
    try:
        steps: list[str] = []
        run(steps, first_signal=True, second_signal=True)
        assert steps == ["stopped admitting", "served", "shut down"]
        assert raised == [signal.SIGINT]  # once, though two came, and only at the end
    finally:
        signal.signal(signal.SIGINT, before)


def test_the_handlers_are_restored_when_the_app_fails_and_nothing_is_raised() -> None:
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    steps: list[str] = []
    with pytest.raises(RuntimeError):
        run(steps, fails=True)
    assert steps == ["served"]
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before
    run(steps)  # no signal came: none is raised
    assert steps == ["served", "served", "shut down"]
