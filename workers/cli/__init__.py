"""The ``deepscan`` command: the top-level parser and ``main``; each command module registers its own.

Exit status: 0 when every input was analysed, 1 when some could not be (each still has its line and its
row), 2 for usage or configuration errors. ``scan --wait``: 0 when the scan completed, 1 when it could not
finish (timeout, broker unreachable), 2 for usage or configuration errors. Ctrl-C: 130. ``scan`` and
``detect`` stopped by SIGTERM: 143, with what Ctrl-C leaves: a scan still queuing (or a ``detect`` run)
marked failed; one wholly queued is left to the workers, who finish it.

A new group of commands is a module with a ``register(sub)`` that adds its subparsers, each with its
``func``; naming it in ``COMMAND_MODULES`` is all it takes to appear. Command modules import heavy
libraries (TensorFlow through ``pipeline``, Celery, SQLAlchemy) inside their ``cmd_*`` functions, so that
``deepscan --help`` stays fast.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from typing import Protocol

from workers.cli import analysis, packs, scanning, web
from workers.cli.helpers import (
    EXIT_INCOMPLETE,
    EXIT_OK,
    EXIT_SOME_FAILED,
    EXIT_TERMINATED,
    EXIT_USAGE,
    Subparsers,
    Terminated,
)
from workers.errors import ScanError, UsageError

__all__ = [
    "COMMAND_MODULES",
    "EXIT_INCOMPLETE",
    "EXIT_OK",
    "EXIT_SOME_FAILED",
    "EXIT_USAGE",
    "build_parser",
    "main",
]


class CommandModule(Protocol):
    def register(self, sub: Subparsers) -> None: ...


# in this order in ``deepscan --help``
COMMAND_MODULES: tuple[CommandModule, ...] = (analysis, scanning, web, packs)


def _quiet_frameworks() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ start-up chatter
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="deepscan", description="Find deepfakes in images, videos and audio."
    )
    parser.add_argument(
        "--log-level", default=None, help="logging level (default: DEEPSCAN_LOG_LEVEL or WARNING)"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for module in COMMAND_MODULES:
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    _quiet_frameworks()
    parser = build_parser()
    args = parser.parse_args(argv)
    from workers import logs
    from workers.settings import get_settings

    level = args.log_level or get_settings().log_level
    logging.basicConfig(level=level.upper(), stream=sys.stderr)
    logs.configure(logging.getLogger().handlers, get_settings().log_format)
    # Its retracing warnings are expected: predictions are padded to a bounded set of batch shapes.
    logging.getLogger("tensorflow").setLevel(max(logging.ERROR, logging.getLogger().level))
    try:
        return int(args.func(args))
    except UsageError as e:
        print(f"deepscan: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except ScanError as e:
        print(f"deepscan: error: {e}", file=sys.stderr)
        return EXIT_INCOMPLETE
    except KeyboardInterrupt:
        return 130
    except Terminated:
        return EXIT_TERMINATED
