"""Process lifecycle: every live logger is closed however the process ends, restarted in a fork.

One home for the hooks the interpreter and the OS give us:

- ``atexit``: a normal exit closes every logger (final write, final export).
- ``os.register_at_fork``: a forked child (a DataLoader worker) starts its loggers clean;
  the parent's threads did not survive the fork and the parent writes its own events.
- ``multiprocessing.util.Finalize`` in each multiprocessing child: such children leave
  through ``os._exit`` (no atexit), but run their finalisers first.
- SIGTERM (``install_sigterm_handler``, when logging is configured): close every logger within
  a bound, then do what the previous handler would have done.
- Interpreter shutdown and garbage collection: ``MicroMetricLogger.__del__`` calls
  ``close_quietly``.

Loggers take part by implementing the small ``ManagedLogger`` protocol and calling
``register`` once; this module holds them weakly and never imports the facade.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import multiprocessing.util
import os
import signal
import threading
import weakref
from collections.abc import Callable
from types import FrameType
from typing import Any, Protocol

from otel_sparse.config import sigterm_handler_enabled

_logger = logging.getLogger("otel_sparse")

SIGNAL_CLOSE_SLACK_S = 10.0
"""Seconds a SIGTERM close may take beyond the loggers' shutdown timeout (writing events)."""
_DEFAULT_CLOSE_TIMEOUT_S = 3.0
"""The SIGTERM bound when no logger has a writer (the default shutdown timeout)."""


class ManagedLogger(Protocol):
    """What the lifecycle hooks need from a logger.

    ``MicroMetricLogger`` implements it; so can any object that owns background threads and
    buffered events and registers itself with ``register``.
    """

    def close(self) -> None:
        """Write what is buffered, export a last time, stop the threads. Must not raise for
        an ordinary failure (it is called at exit); exceptions are logged here anyway."""

    def after_fork_in_child(self) -> None:
        """Called in a forked child before anything else runs: drop the parent's threads,
        locks and buffered events (the parent writes those), start clean."""

    def close_timeout_s(self) -> float | None:
        """Seconds ``close()`` may spend exporting, or None when nothing is running."""

    def defer_if_busy(self, call: Callable[[], None]) -> bool:
        """If the current thread is inside the logger's locked section (a signal handler
        interrupted it), arrange for ``call()`` to run on it when the section ends and return
        True; else return False."""


_live: weakref.WeakSet[Any] = weakref.WeakSet()


def register(logger: ManagedLogger) -> None:
    """Have ``logger`` closed at exit, on SIGTERM and in multiprocessing children, and told
    about forks. Held weakly: garbage collection still finalises it."""
    _live.add(logger)


def live_loggers() -> list[ManagedLogger]:
    """Every registered logger not yet garbage collected."""
    return list(_live)


def close_all() -> None:
    """Close every live logger; a failure is logged and the next logger still closes."""
    for logger in live_loggers():
        try:
            logger.close()
        except Exception:
            _logger.exception("otel_sparse: final flush failed")


_exiting = False


def exiting() -> bool:
    """Whether the exit-time close has begun: threads may no longer start (3.12+) or run
    to the end, so whatever is logged from now on is written on the caller's thread."""
    return _exiting


def _close_all_at_exit() -> None:
    global _exiting
    _exiting = True
    close_all()


def close_quietly(logger: ManagedLogger) -> None:
    """``logger.close()`` from a finaliser (``__del__``, interpreter exit): never raises."""
    with contextlib.suppress(Exception):  # logging itself may be gone at interpreter exit
        logger.close()


# -- SIGTERM ----------------------------------------------------------------------------------

_previous_sigterm: Any = None
"""The handler ``_on_sigterm`` replaced, run after the loggers are closed."""


def install_sigterm_handler() -> None:
    """Put ``_on_sigterm`` in front of the SIGTERM handler: main thread only, once, if allowed
    (``OTEL_SPARSE_SIGTERM_HANDLER``).

    Only over ``SIG_DFL`` or a Python callable: ``SIG_IGN`` and handlers installed outside
    Python stay as they are.
    """
    global _previous_sigterm
    if threading.current_thread() is not threading.main_thread():
        return
    try:
        current = signal.getsignal(signal.SIGTERM)
        if current is _on_sigterm or not sigterm_handler_enabled():
            return
        if current is not signal.SIG_DFL and not callable(current):
            return
        signal.signal(signal.SIGTERM, _on_sigterm)
    except (ValueError, OSError, AttributeError):  # no SIGTERM here, or not allowed
        return
    _previous_sigterm = current


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    """Close every logger (bounded), then do what the previous handler would have done.

    When the signal interrupted a logger's locked section on this (the main) thread, a
    close would wait for that section, which cannot end before the handler returns: all of
    it then runs when the section ends, a few bytecodes later.
    """
    def finish() -> None:
        _finish_sigterm(signum, frame)

    for logger in live_loggers():
        defer = getattr(logger, "defer_if_busy", None)  # a logger of another make may lack it
        if defer is not None and defer(finish):
            return
    _finish_sigterm(signum, frame)


def _finish_sigterm(signum: int, frame: FrameType | None) -> None:
    try:
        _close_all_for_signal()
    except Exception:
        _logger.exception("otel_sparse: final flush on SIGTERM failed")
    previous = _previous_sigterm
    if callable(previous):
        previous(signum, frame)
        return
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # die of SIGTERM, as without us
    os.kill(os.getpid(), signal.SIGTERM)


def _close_all_for_signal() -> None:
    # The handler runs on the main thread between two bytecodes, possibly inside one of our
    # locked sections: closing there could wait on itself. A helper thread closes instead,
    # and the wait for it is bounded.
    timeouts = [t for t in (lg.close_timeout_s() for lg in live_loggers()) if t is not None]
    limit = max(timeouts, default=_DEFAULT_CLOSE_TIMEOUT_S)
    closer = threading.Thread(target=close_all, name="otel-sparse-sigterm", daemon=True)
    closer.start()
    closer.join(limit + SIGNAL_CLOSE_SLACK_S)
    if closer.is_alive():
        _logger.warning("otel_sparse: SIGTERM: the final flush did not finish in time; "
                        "events of the last moments may be missing")


# -- fork and multiprocessing -----------------------------------------------------------------


_fork_resets: list[Callable[[], None]] = []


def after_fork_in_child(reset: Callable[[], None]) -> None:
    """Have ``reset()`` run in every forked child before the loggers are told: for module
    state such as a lock a thread of the parent may have held at the fork."""
    _fork_resets.append(reset)


def _after_fork_in_child() -> None:
    for reset in _fork_resets:
        reset()
    for logger in live_loggers():
        logger.after_fork_in_child()


def _register_child_exit_flush(_: object) -> None:
    # Runs in a multiprocessing child after it cleared the parent's finalisers. Such children
    # leave through os._exit, skipping atexit, but run their finalisers first.
    multiprocessing.util.Finalize(None, close_all, exitpriority=100)


class _ForkHook:
    """Held for the module's lifetime: multiprocessing keeps after-fork hooks weakly."""


_FORK_HOOK = _ForkHook()
atexit.register(_close_all_at_exit)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
multiprocessing.util.register_after_fork(_FORK_HOOK, _register_child_exit_flush)
