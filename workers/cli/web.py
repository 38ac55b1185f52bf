"""``deepscan serve`` (the web app and API) and ``deepscan report`` (a static triage report of a scan).

``register(subparsers)`` adds both commands to the ``deepscan`` parser; each returns an exit status.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import sys
from pathlib import Path
from typing import Any

from workers.cli.helpers import EXIT_OK, Subparsers
from workers.errors import UsageError

DEFAULT_HOST, DEFAULT_PORT = "127.0.0.1", 8000
DEFAULT_REPORT_EXPLANATIONS = 20  # flagged images explained per report: about 15 s each on a small CPU


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` serves this machine only (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name: it may resolve to any interface
        return False


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from pipeline.errors import ModelPackError
    from pipeline.pack import read_manifest
    from workers.settings import get_settings
    from workers.web.app import create_app

    settings = get_settings()
    if settings.api_token is not None and not settings.api_token.get_secret_value():
        raise UsageError("DEEPSCAN_API_TOKEN is set but empty: give it a value, or unset it")
    if not is_loopback(args.host) and settings.api_token is None:
        raise UsageError(
            f"--host {args.host} serves beyond this machine and DEEPSCAN_API_TOKEN is not set: "
            "set a token (clients then send 'Authorization: Bearer TOKEN'), or serve on 127.0.0.1"
        )
    try:
        read_manifest(settings.models_dir)  # a pack that cannot load is a usage error, before listening
    except ModelPackError as e:
        raise UsageError(f"cannot read the model pack in {settings.models_dir}: {e.reason}") from e
    app = create_app(settings)
    print(f"deepscan: serving on http://{args.host}:{args.port}/ (API docs at /docs)", file=sys.stderr)
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        log_level=(args.log_level or settings.log_level).lower(),
        # the CLI configured logging already; uvicorn's own config would replace it
        log_config=None,
    )
    return EXIT_OK


def cmd_report(args: argparse.Namespace) -> int:
    from workers.web.report import write_report

    try:
        summary: dict[str, Any] = write_report(
            args.scan,
            Path(args.out),
            database_url=args.database_url,
            models=args.models,
            max_explanations=0 if args.no_explain else args.explain_limit,
        )
    except LookupError as e:
        raise UsageError(str(e)) from e
    print(json.dumps(summary))
    return EXIT_OK


def register(subparsers: Subparsers) -> None:
    """Add ``serve`` and ``report`` to the ``deepscan`` subcommands."""
    serve = subparsers.add_parser("serve", help="the web app and REST API (upload page at /, docs at /docs)")
    serve.add_argument("--host", default=DEFAULT_HOST, help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=DEFAULT_PORT, help="port (default 8000)")
    serve.set_defaults(func=cmd_serve)

    report = subparsers.add_parser("report", help="a static HTML triage report of a scan (one folder)")
    report.add_argument("--scan", type=int, required=True, metavar="ID")
    report.add_argument(
        "--out", required=True, metavar="DIR", help="folder to write (index.html and figures)"
    )
    report.add_argument(
        "--models", metavar="DIR", help="model pack for the explanations (default: configured)"
    )
    report.add_argument("--database-url")
    report.add_argument(
        "--explain-limit",
        type=int,
        default=DEFAULT_REPORT_EXPLANATIONS,
        metavar="N",
        help=f"explain at most N flagged images, the most suspicious first (default {DEFAULT_REPORT_EXPLANATIONS})",
    )
    report.add_argument("--no-explain", action="store_true", help="no LIME explanations (no model loaded)")
    report.set_defaults(func=cmd_report)
