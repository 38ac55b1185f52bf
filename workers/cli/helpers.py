"""What every command module of ``deepscan`` shares: its exit statuses (``workers.cli`` says when each
is returned), the type of the subparsers that ``register`` takes, a quiet import of the backend, and
SIGTERM turned into an exception for the commands that record scans."""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import TypeAlias

EXIT_OK, EXIT_SOME_FAILED, EXIT_USAGE = 0, 1, 2
EXIT_INCOMPLETE = 1  # scan --wait: the scan could not finish (timeout, broker down, scan failed)
EXIT_TERMINATED = 128 + signal.SIGTERM  # 143, what a shell reports for a process that SIGTERM ended

# what ``build_parser`` hands each command module's ``register``: it adds its commands with add_parser
Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


@contextmanager
def _stderr_silenced() -> Iterator[None]:
    """File descriptor 2 points at /dev/null inside: what C++ libraries write there is dropped."""
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    try:
        sys.stderr.flush()
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def import_backend_quietly() -> None:
    """Import TensorFlow (the Keras backend here) with its C++ start-up banner silenced.

    TensorFlow 2.18+ writes an absl line and a oneDNN notice to fd 2 at import, whatever
    ``TF_CPP_MIN_LOG_LEVEL`` says. An import that fails is left for Keras to report, with its message.
    """
    if os.environ.get("KERAS_BACKEND", "tensorflow") != "tensorflow" or "tensorflow" in sys.modules:
        return
    with _stderr_silenced(), contextlib.suppress(ImportError):
        import tensorflow  # noqa: F401


class Terminated(BaseException):
    """SIGTERM, raised in the main thread as SIGINT raises KeyboardInterrupt (see ``sigterm_unwinds``).

    Not an ``Exception``: no ``except Exception`` on the way (botocore's retries, a task's failure
    handling) takes it for an error of its own and carries on.
    """


@contextmanager
def sigterm_unwinds() -> Iterator[None]:
    """Inside, SIGTERM (``timeout``, ``docker stop``, a job's deadline) raises ``Terminated``: the command
    unwinds as after Ctrl-C, so a scan it was still queuing (or a ``detect`` run) is marked failed with
    the reason; a scan wholly queued is left to the workers, who finish it.

    Python's default ends the process on the spot, running no ``finally``: the scan stayed 'queuing' (or a
    ``detect`` run 'running') for ever, and a queuing scan holds off the scheduled scans of its prefix.
    """

    def terminated(signum: int, frame: FrameType | None) -> None:
        raise Terminated(f"stopped by {signal.Signals(signum).name}")

    previous = signal.signal(signal.SIGTERM, terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
