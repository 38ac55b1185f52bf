"""What every command module of ``deepscan`` shares: its exit statuses (``workers.cli`` says when each
is returned) and the type of the subparsers that ``register`` takes."""

from __future__ import annotations

import argparse
from typing import TypeAlias

EXIT_OK, EXIT_SOME_FAILED, EXIT_USAGE = 0, 1, 2
EXIT_INCOMPLETE = 1  # scan --wait: the scan could not finish (timeout, broker down, scan failed)

# what ``build_parser`` hands each command module's ``register``: it adds its commands with add_parser
Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"
