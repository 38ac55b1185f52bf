"""``deepscan scan``, ``results``, ``scans``, ``worker``, ``beat``, ``db`` and ``doctor``: the scanner.

``scan`` without ``DEEPSCAN_BROKER_URL`` runs the scan in this process (the embedded default): the same
producer and tasks, executed here, one object after another."""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from workers.cli.helpers import EXIT_INCOMPLETE, EXIT_OK, Subparsers, sigterm_unwinds
from workers.cli.output import ScanProgressReport, Writer, format_checks, format_scans
from workers.errors import UsageError

if TYPE_CHECKING:
    from sqlalchemy.orm import Session, sessionmaker

    from workers.producer import QueuedScan


def register(sub: Subparsers) -> None:
    scan = sub.add_parser(
        "scan",
        help="scan a bucket prefix or folder: in this process, or through the workers when a broker is set",
    )
    scan.add_argument("uri", metavar="URI", help="s3://bucket/prefix or a local folder")
    scan.add_argument(
        "--wait", action="store_true", help="with a broker: wait until every object has its result"
    )
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
    results.add_argument(
        "--provenance", choices=("ai", "camera", "none"), help="what the file says of its origin"
    )
    results.add_argument("--format", choices=("jsonl", "table", "csv"), default="jsonl")
    results.add_argument("--database-url")
    results.set_defaults(func=cmd_results)

    scans = sub.add_parser("scans", help="list scans with their counts")
    scans.add_argument("--format", choices=("jsonl", "table"), default="jsonl")
    scans.add_argument("--database-url")
    scans.set_defaults(func=cmd_scans)

    doctor = sub.add_parser(
        "doctor", help="what is installed and reachable: ffmpeg, pack, database, broker, S3"
    )
    doctor.set_defaults(func=cmd_doctor)

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


@sigterm_unwinds()
def cmd_scan(args: argparse.Namespace) -> int:
    from workers import producer
    from workers.resources import open_sessions

    sessions = open_sessions()  # migrates: the workers write into the same database
    if producer.in_process():
        return _scan_in_process(args, sessions)
    started = producer.start_scan(args.uri, force=args.force, sessions=sessions)
    assert started is not None  # only scheduled scans are skipped
    print(json.dumps(_summary(started)), flush=True)
    if not args.wait:
        return EXIT_OK
    report = ScanProgressReport()
    try:
        final = producer.wait_for_scan(
            started.scan_id, timeout_s=args.timeout, poll_s=args.poll, on_progress=report, sessions=sessions
        )
    finally:
        report.close()
    print(json.dumps(final.as_dict()))
    return EXIT_OK


def _summary(started: QueuedScan) -> dict[str, object]:
    return {
        "scan_id": started.scan_id,
        "uri": started.uri,
        "queued": started.queued,
        "skipped": started.skipped,
    }


def _scan_in_process(args: argparse.Namespace, sessions: sessionmaker[Session]) -> int:
    """The embedded scan: every task runs here, so the scan is over when ``start_scan`` returns."""
    from workers import producer
    from workers.checks import require_media_programs
    from workers.cli.helpers import import_backend_quietly

    require_media_programs()
    import_backend_quietly()
    report = ScanProgressReport()
    try:
        started = producer.start_scan(args.uri, force=args.force, sessions=sessions, on_progress=report)
    finally:
        report.close()
    assert started is not None  # only scheduled scans are skipped
    print(json.dumps(_summary(started)), flush=True)
    final = producer.scan_progress(started.scan_id, sessions=sessions)
    print(json.dumps(final.as_dict()))
    return EXIT_OK if final.status == "complete" else EXIT_INCOMPLETE


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
                provenance=args.provenance,
            )
        ]
    writer = Writer(args.format)
    for row in rows:
        writer.write(row)
    writer.close()
    return EXIT_OK


def cmd_scans(args: argparse.Namespace) -> int:
    from db import queries
    from workers.resources import open_database

    with open_database(args.database_url) as session:
        scans = queries.scan_counts(session)
    if args.format == "table":
        print(format_scans(scans))
    else:
        for scan in scans:
            print(json.dumps(scan, default=str))
    return EXIT_OK


def cmd_doctor(args: argparse.Namespace) -> int:
    from workers.checks import doctor
    from workers.cli.helpers import import_backend_quietly
    from workers.settings import get_settings

    import_backend_quietly()
    checks = doctor(get_settings())
    print(format_checks(checks))
    return EXIT_OK if all(check.ok or not check.required for check in checks) else EXIT_INCOMPLETE


def _metrics_directory() -> None:
    """Prometheus multiprocess mode for the pool's children: a fresh ``PROMETHEUS_MULTIPROC_DIR``, set
    before anything imports prometheus_client (see ``workers.metrics``)."""
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if directory:
        for stale in Path(directory).glob("*.db"):  # a previous run's samples
            stale.unlink()
    else:
        directory = tempfile.mkdtemp(prefix="deepscan-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory


def cmd_worker(args: argparse.Namespace) -> int:
    from workers.settings import get_settings

    settings = get_settings()
    if settings.metrics_port:
        _metrics_directory()
    from workers import metrics, resources
    from workers.celery_app import GPU_QUEUE, LIGHT_QUEUE, app, require_broker

    require_broker(settings)

    queues = [q.strip() for q in args.queues.split(",") if q.strip()]
    unknown = set(queues) - {LIGHT_QUEUE, GPU_QUEUE}
    if not queues or unknown:
        raise UsageError(f"--queues takes {LIGHT_QUEUE} and/or {GPU_QUEUE}, not {args.queues!r}")
    resources.open_sessions()  # migrate once, before the pool forks
    if settings.models_uri:
        resources.pack_directory()  # pull (and verify) once, before the pool forks
    if settings.metrics_port:
        metrics.serve(settings.metrics_port, broker_url=settings.broker_url, queues=tuple(queues))
    argv = [
        "worker",
        f"--queues={','.join(queues)}",
        f"--pool={args.pool}",
        f"--hostname={args.hostname}",
        # --log-level is deepscan's own option (build_parser), not the worker command's
        f"--loglevel={(args.log_level or settings.log_level).upper()}",
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
