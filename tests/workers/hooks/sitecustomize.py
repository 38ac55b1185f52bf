"""Test-only crash hook, never on a production path: a worker started with this folder first on
PYTHONPATH loads it at interpreter start. Each pool process then dies at once (``os._exit``, as in a
segfault in native code) when asked to analyse a file whose name contains ``DEEPSCAN_TEST_CRASH_ON``."""

from __future__ import annotations

import os
from typing import Any

MARKER = os.environ.get("DEEPSCAN_TEST_CRASH_ON")

if MARKER:
    from celery import signals

    def _install_crash(**_: Any) -> None:
        from pipeline.analyze import Analyzer

        analyze_file = Analyzer.analyze_file

        def crashing(self: Any, path: Any, *args: Any, **kwargs: Any) -> Any:
            if MARKER in os.fspath(path):
                os._exit(70)
            return analyze_file(self, path, *args, **kwargs)

        Analyzer.analyze_file = crashing  # type: ignore[method-assign]

    signals.worker_process_init.connect(_install_crash, weak=False)
