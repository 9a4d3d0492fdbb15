"""Shared pytest fixtures."""

from __future__ import annotations

import signal

import pytest
import torch


@pytest.fixture
def one_thread():
    """Tiny tensors: one thread is faster, and far faster on a shared, busy CPU.

    Sets torch's intra-op threads to 1 for the test and restores the old count after. Use it by
    name, or for a whole file with ``pytestmark = pytest.mark.usefixtures("one_thread")``.
    """
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def default_stop_signals() -> None:
    """Give SIGINT, SIGTERM and SIGHUP their default dispositions (SIGINT: KeyboardInterrupt).

    A test run started in the background (``cmd &`` without job control ignores SIGINT) or
    under ``nohup`` (ignores SIGHUP) passes those ignored dispositions on to every process it
    starts, and vostool rightly keeps an ignored signal ignored. Tests of what a signal does
    start from the defaults, as a user's terminal does: in-process through the fixture below,
    in a child process with ``preexec_fn=default_stop_signals``.
    """
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for name in ("SIGTERM", "SIGHUP"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), signal.SIG_DFL)


@pytest.fixture
def stop_signals_at_default():
    """The stop signals at their defaults for one test, restored after it."""
    names = [n for n in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, n)]
    before = {n: signal.getsignal(getattr(signal, n)) for n in names}
    default_stop_signals()
    yield
    for n, handler in before.items():
        signal.signal(getattr(signal, n), handler)
