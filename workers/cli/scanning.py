"""``deepscan scan``, ``results``, ``scans``, ``worker``, ``beat`` and ``db``: the distributed scanner."""

from __future__ import annotations

import argparse
import json
import os

from workers.cli.helpers import EXIT_OK, Subparsers
from workers.cli.output import ScanProgressReport, Writer
from workers.errors import UsageError


def register(sub: Subparsers) -> None:
    scan = sub.add_parser("scan", help="queue a bucket prefix or folder for the workers (distributed)")
    scan.add_argument("uri", metavar="URI", help="s3://bucket/prefix or a local folder")
    scan.add_argument("--wait", action="store_true", help="wait until every object has its result")
    scan.add_argument("--force", action="store_true", help="re-analyse objects already analysed")
    scan.add_argument(
        "--timeout", type=float, default=None, metavar="S", help="with --wait: give up after S s"
    )
    scan.add_argument("--poll", type=float, default=1.0, metavar="S", help=argparse.SUPPRESS)
    scan.set_defaults(func=cmd_scan)

    results = sub.add_parser("results", help="query stored results")
    results.add_argument("--scan", type=int)
    results.add_argument("--label", choices=("fake", "real"))
    results.add_argument("--status")
    results.add_argument("--min-probability", type=float)
    results.add_argument("--format", choices=("jsonl", "table", "csv"), default="jsonl")
    results.add_argument("--database-url")
    results.set_defaults(func=cmd_results)

    scans = sub.add_parser("scans", help="list scans with their counts")
    scans.add_argument("--database-url")
    scans.set_defaults(func=cmd_scans)

    worker = sub.add_parser("worker", help="run a worker of the distributed scanner")
    worker.add_argument("--queues", default="light,gpu", help="light, gpu, or both (default: both)")
    worker.add_argument("--concurrency", type=int, default=None, help="processes (default: one per core)")
    worker.add_argument("--pool", default="prefork", choices=("prefork", "solo", "threads"))
    worker.add_argument("--hostname", default=f"deepscan-{os.getpid()}@%h", help="node name, unique per host")
    worker.set_defaults(func=cmd_worker)

    beat = sub.add_parser("beat", help="run the scheduler of DEEPSCAN_SCHEDULES (incremental scans)")
    beat.add_argument("--schedule-file", default="celerybeat-schedule", help="where beat keeps its state")
    beat.set_defaults(func=cmd_beat)

    db = sub.add_parser("db", help="database schema")
    db.add_argument("action", choices=("upgrade",))
    db.add_argument("--database-url")
    db.set_defaults(func=cmd_db)


def cmd_scan(args: argparse.Namespace) -> int:
    from workers import producer
    from workers.resources import open_sessions

    sessions = open_sessions()  # migrates: the workers write into the same database
    started = producer.start_scan(args.uri, force=args.force, sessions=sessions)
    assert started is not None  # only scheduled scans are skipped
    summary = {
        "scan_id": started.scan_id,
        "uri": started.uri,
        "queued": started.queued,
        "skipped": started.skipped,
    }
    print(json.dumps(summary), flush=True)
    if not args.wait:
        return EXIT_OK
    report = ScanProgressReport(started.scan_id)
    try:
        final = producer.wait_for_scan(
            started.scan_id, timeout_s=args.timeout, poll_s=args.poll, on_progress=report, sessions=sessions
        )
    finally:
        report.close()
    print(json.dumps(final.as_dict()))
    return EXIT_OK


def cmd_results(args: argparse.Namespace) -> int:
    from db import queries
    from workers.resources import open_database

    with open_database(args.database_url) as session:
        rows = [
            queries.result_to_dict(r)
            for r in queries.list_results(
                session,
                scan_id=args.scan,
                label=args.label,
                status=args.status,
                min_probability=args.min_probability,
            )
        ]
    writer = Writer(args.format)
    for row in rows:
        row.setdefault("path", row.get("uri"))
        row.setdefault(
            "model", f"{row['model_name']}@{row['model_version']}" if row.get("model_name") else None
        )
        writer.write(row)
    writer.close()
    return EXIT_OK


def cmd_scans(args: argparse.Namespace) -> int:
    from db import queries
    from workers.resources import open_database

    with open_database(args.database_url) as session:
        for scan in queries.scan_counts(session):
            print(json.dumps(scan, default=str))
    return EXIT_OK


def cmd_worker(args: argparse.Namespace) -> int:
    from workers.celery_app import GPU_QUEUE, LIGHT_QUEUE, app, require_broker
    from workers.resources import open_sessions
    from workers.settings import get_settings

    require_broker(get_settings())

    queues = [q.strip() for q in args.queues.split(",") if q.strip()]
    unknown = set(queues) - {LIGHT_QUEUE, GPU_QUEUE}
    if not queues or unknown:
        raise UsageError(f"--queues takes {LIGHT_QUEUE} and/or {GPU_QUEUE}, not {args.queues!r}")
    open_sessions()  # migrate once, before the pool forks
    argv = [
        "worker",
        f"--queues={','.join(queues)}",
        f"--pool={args.pool}",
        f"--hostname={args.hostname}",
        # --log-level is deepscan's own option (build_parser), not the worker command's
        f"--loglevel={(args.log_level or get_settings().log_level).upper()}",
    ]
    if args.concurrency:
        argv.append(f"--concurrency={args.concurrency}")
    app.worker_main(argv)
    return EXIT_OK


def cmd_beat(args: argparse.Namespace) -> int:
    from workers.settings import get_settings

    settings = get_settings()
    if not settings.schedules:
        raise UsageError(
            'DEEPSCAN_SCHEDULES is empty: set it to e.g. [{"uri": "s3://bucket/prefix", "every_s": 3600}]'
        )
    from workers.celery_app import app, require_broker

    require_broker(settings)
    app.Beat(schedule=args.schedule_file, loglevel=(args.log_level or settings.log_level).upper()).run()
    return EXIT_OK


def cmd_db(args: argparse.Namespace) -> int:
    from db.session import migrate
    from workers.settings import get_settings

    migrate(args.database_url or get_settings().database_url)
    print("database is at the latest schema")
    return EXIT_OK
