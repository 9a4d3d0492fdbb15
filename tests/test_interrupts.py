"""vostool.interrupts in-process: stop signals become one orderly KeyboardInterrupt."""

from __future__ import annotations

import os
import signal
import threading

import pytest

from vostool.interrupts import (
    Interrupted,
    deferred_signals,
    interrupt_exit_code,
    interrupt_message,
    orderly_signals,
)

# as in a terminal, whatever the test runner inherited (see conftest.default_stop_signals)
pytestmark = pytest.mark.usefixtures("stop_signals_at_default")


def deliver(sig: int) -> None:
    os.kill(os.getpid(), sig)
    for _ in range(1000):  # the handler runs between two bytecodes of the main thread
        pass


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143), (signal.SIGHUP, 129)])
def test_first_signal_interrupts_later_ones_are_ignored(sig, code):
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    shutdown_done = False
    with pytest.raises(Interrupted) as info:
        with orderly_signals():
            try:
                deliver(sig)
            finally:  # the shutdown: neither signal can cut it short
                deliver(signal.SIGINT)
                deliver(signal.SIGTERM)
                shutdown_done = True
    assert shutdown_done and info.value.signum == sig
    assert interrupt_exit_code(info.value) == code
    assert isinstance(info.value, KeyboardInterrupt)
    assert interrupt_message(info.value) == (
        "interrupted: outputs written so far are complete" if sig == signal.SIGINT
        else f"interrupted ({signal.Signals(sig).name}): outputs written so far are complete")
    assert {s: signal.getsignal(s) for s in before} == before  # restored
    assert interrupt_exit_code(KeyboardInterrupt()) == 130


def test_an_ignored_signal_stays_ignored():
    previous = signal.signal(signal.SIGHUP, signal.SIG_IGN)  # as under nohup
    try:
        with orderly_signals():
            deliver(signal.SIGHUP)
            with deferred_signals():
                deliver(signal.SIGHUP)
        assert signal.getsignal(signal.SIGHUP) == signal.SIG_IGN
    finally:
        signal.signal(signal.SIGHUP, previous)


def test_deferred_signals_act_after_the_block():
    done = []
    with pytest.raises(KeyboardInterrupt):
        with deferred_signals():
            deliver(signal.SIGINT)
            done.append("frame written")
    assert done == ["frame written"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    with orderly_signals(), pytest.raises(Interrupted) as info:
        with deferred_signals():
            deliver(signal.SIGTERM)
            done.append("again")
    assert done[-1] == "again" and info.value.signum == signal.SIGTERM


def test_other_threads_are_left_alone():
    before = signal.getsignal(signal.SIGTERM)
    seen = []

    def run() -> None:
        with orderly_signals():  # Python handlers belong to the main thread: nothing installed
            seen.append(signal.getsignal(signal.SIGTERM))

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    assert seen == [before]


def test_a_lost_interrupt_still_stops_the_next_frame(tmp_path):
    from test_io_helpers import make_video
    from test_io_writers import fake_result

    from vostool.io import AsyncWriter, OutputWriter, open_source

    src_path = make_video(tmp_path / "clip.mkv", n=6)
    out = tmp_path / "out"
    written = 0
    with orderly_signals(), open_source(src_path) as src, pytest.raises(Interrupted) as info:
        with AsyncWriter(OutputWriter(out, {"masks", "overlay"}, src)) as writer:
            for frame in src:
                writer.write(frame, fake_result(frame))
                written += 1
                if frame.index == 2:
                    try:  # C code that checks for signals and clears the error
                        deliver(signal.SIGTERM)
                    except KeyboardInterrupt:
                        pass
    assert info.value.signum == signal.SIGTERM and written == 3
    assert len(list((out / "masks").glob("*.png"))) == 3
