"""Stopping a run in order: SIGINT, SIGTERM and SIGHUP all end in the same clean shutdown.

:func:`orderly_signals` (installed by the CLI around every command) turns the first of
these signals into :class:`Interrupted`, a :class:`KeyboardInterrupt`, so ``with`` blocks
close the writers exactly as for Ctrl-C; from then on further signals (a second Ctrl-C,
``docker stop`` after ``kill``) are noted and ignored, so the shutdown that finishes the
videos cannot itself be interrupted. :func:`deferred_signals` guards a short critical
section (one frame written to every output, the videos' finalisation) when a library
user calls the writers without the CLI: a signal arriving inside is handled on leaving.

Only the main thread receives Python signal handlers; :func:`block_signals_in_thread`
keeps a worker thread (and the encoder threads it starts) from having its system calls
cut short by them.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

#: The signals that stop a run in order, and the shell's exit code for each (128 + number).
STOP_SIGNALS: tuple[signal.Signals, ...] = tuple(
    getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name)
)


class Interrupted(KeyboardInterrupt):
    """The run was stopped by ``signum`` (SIGINT, SIGTERM or SIGHUP)."""

    def __init__(self, signum: int = signal.SIGINT) -> None:
        super().__init__(signum)
        self.signum = int(signum)

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.signum).name

    @property
    def exit_code(self) -> int:
        """128 + the signal number, as a shell reports a process killed by it (130, 143, 129)."""
        return 128 + self.signum


def interrupt_exit_code(exc: BaseException) -> int:
    """The exit code for an interrupt: :attr:`Interrupted.exit_code`, 130 for a plain Ctrl-C."""
    return exc.exit_code if isinstance(exc, Interrupted) else 128 + int(signal.SIGINT)


def interrupt_message(exc: BaseException) -> str:
    """The one line for a stopped run: which signal (when not Ctrl-C), and that outputs are complete."""
    name = exc.signal_name if isinstance(exc, Interrupted) and exc.signum != signal.SIGINT else ""
    return f"interrupted{f' ({name})' if name else ''}: outputs written so far are complete"


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


class _State:
    first: int | None = None  # the signal that started the shutdown
    stopped = False  # a stop signal arrived in this process (see ignore_if_stopped)
    installed: tuple[int, ...] = ()  # the signals orderly_signals() handles


def _ignore_later(signum: int, frame: FrameType | None) -> None:
    """A signal during the shutdown: the shutdown goes on."""


def _stop(signum: int, frame: FrameType | None) -> None:
    if _State.first is not None:
        return
    _State.first = signum
    _State.stopped = True
    for sig in _State.installed:  # from now on the shutdown itself is never cut short
        signal.signal(sig, _ignore_later)
    raise Interrupted(signum)


@contextmanager
def orderly_signals() -> Iterator[None]:
    """Inside: SIGINT, SIGTERM and SIGHUP raise :class:`Interrupted` once, then are ignored.

    The previous handlers are restored on leaving. Outside the main thread (where Python
    cannot install handlers) it does nothing.
    """
    if not _in_main_thread():
        yield
        return
    previous: dict[int, Any] = {}
    saved = _State.first, _State.installed
    # a signal ignored by whoever started us (nohup ignores SIGHUP) stays ignored
    wanted = tuple(sig for sig in STOP_SIGNALS if signal.getsignal(sig) != signal.SIG_IGN)
    _State.first, _State.installed = None, wanted
    try:
        for sig in wanted:
            previous[sig] = signal.signal(sig, _stop)
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        _State.first, _State.installed = saved


def raise_if_stopped() -> None:
    """Raise :class:`Interrupted` again if a stop signal came in (main thread only).

    For loops that start new work (the next frame): a C extension that checks for signals
    and then clears the error can lose the first :class:`Interrupted`; with later signals
    ignored, the run must still stop at its next step.
    """
    if _State.first is not None and _in_main_thread():
        raise Interrupted(_State.first)


def ignore_if_stopped() -> None:
    """For a process's entry point, as it returns: after a stop signal, ignore the stop
    signals for good, so that one more cannot raise during the interpreter's own shutdown."""
    if _State.stopped and _in_main_thread():
        for sig in STOP_SIGNALS:
            signal.signal(sig, signal.SIG_IGN)


@contextmanager
def deferred_signals() -> Iterator[None]:
    """Hold SIGINT, SIGTERM and SIGHUP until the block ends, then act on the first one.

    For short sections that must not be cut in the middle. On leaving, a signal that
    arrived inside goes to the handler that was in place (e.g. raises
    :class:`KeyboardInterrupt`); a signal that would have killed the process (the default
    action) is sent again. Does nothing outside the main thread.
    """
    if not _in_main_thread():
        yield
        return
    held: list[int] = []

    def hold(signum: int, frame: FrameType | None) -> None:
        held.append(signum)

    previous: dict[int, Any] = {}
    try:
        for sig in STOP_SIGNALS:
            if signal.getsignal(sig) != signal.SIG_IGN:
                previous[sig] = signal.signal(sig, hold)
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
    if held:
        signum = held[0]
        handler = previous.get(signum)
        if callable(handler):
            handler(signum, None)
        elif handler == signal.SIG_DFL:
            os.kill(os.getpid(), signum)


def block_signals_in_thread() -> None:
    """Call first in a worker thread: the stop signals go to the main thread, never here."""
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_BLOCK, set(STOP_SIGNALS))
