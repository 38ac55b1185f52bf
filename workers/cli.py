"""The ``deepscan`` command.

Exit status: 0 when every input was analysed, 1 when some could not be (each still has its line and its
row), 2 for usage or configuration errors. ``scan --wait``: 0 when the scan completed, 1 when it could not
finish (timeout, broker unreachable), 2 for usage or configuration errors.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import logging
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from workers.errors import ScanError, UsageError

if TYPE_CHECKING:
    from workers.producer import ScanProgress

EXIT_OK, EXIT_SOME_FAILED, EXIT_USAGE = 0, 1, 2
EXIT_INCOMPLETE = 1  # scan --wait: the scan could not finish (timeout, broker down, scan failed)
CSV_FIELDS = (
    "path", "media_type", "status", "reason", "label", "fake_probability",
    "confidence_real", "confidence_fake", "model", "n_faces", "elapsed_s",
)  # fmt: skip

logger = logging.getLogger("deepscan")


def _quiet_frameworks() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ start-up chatter
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")


def iter_inputs(paths: Sequence[str]) -> Iterator[Path]:
    """Files named directly, and every file below named folders (recursively, sorted)."""
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            yield from (p for p in sorted(path.rglob("*")) if p.is_file())
        else:
            yield path


# -- output ---------------------------------------------------------------------------------------------


def _flat(row: dict[str, Any]) -> dict[str, Any]:
    confidence = row.get("confidence") or {}
    # a fresh result carries faces and timeline; a stored row keeps faces in details and seconds in frames
    faces = row.get("faces") or (row.get("details") or {}).get("faces") or []
    seconds = row.get("timeline") or row.get("frames") or []
    n_faces = len(faces) or sum(entry.get("n_faces", 0) for entry in seconds)
    return {
        **{k: row.get(k) for k in CSV_FIELDS},
        "confidence_real": confidence.get("real"),
        "confidence_fake": confidence.get("fake"),
        "n_faces": n_faces,
    }


class Writer:
    """Streams results as JSON lines or CSV; collects them for a table printed at the end."""

    def __init__(self, fmt: str, stream: Any = sys.stdout) -> None:
        self.fmt, self.stream = fmt, stream
        self.rows: list[dict[str, Any]] = []
        self._csv = csv.DictWriter(stream, fieldnames=CSV_FIELDS) if fmt == "csv" else None
        if self._csv:
            self._csv.writeheader()

    def write(self, row: dict[str, Any]) -> None:
        if self.fmt == "jsonl":
            self.stream.write(json.dumps(row, default=str) + "\n")
        elif self._csv:
            self._csv.writerow(_flat(row))
        else:
            self.rows.append(row)
        self.stream.flush()

    def close(self) -> None:
        if self.fmt == "table":
            self.stream.write(format_table([_flat(r) for r in self.rows]) + "\n")


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    headers = ("path", "type", "status", "label", "P(fake)", "conf", "faces", "time", "reason")

    def cells(r: dict[str, Any]) -> tuple[str, ...]:
        p = r["fake_probability"]
        conf = r["confidence_fake"] if r["label"] == "fake" else r["confidence_real"]
        return (
            _shorten(str(r["path"]), 48),
            str(r["media_type"]),
            str(r["status"]),
            r["label"] or "-",
            "-" if p is None else f"{p:.3f}",
            "-" if conf is None else f"{conf:.0%}",
            str(r["n_faces"]),
            f"{r['elapsed_s']:.1f}s" if r.get("elapsed_s") is not None else "-",
            _shorten(r["reason"] or "", 60),
        )

    body = [cells(r) for r in rows]
    widths = [max(len(h), *(len(c[i]) for c in body)) if body else len(h) for i, h in enumerate(headers)]
    line = "  ".join
    out = [line(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    out.append(line("-" * w for w in widths))
    out += [line(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in body]
    return "\n".join(out)


def _shorten(text: str, width: int) -> str:
    return text if len(text) <= width else "…" + text[-(width - 1) :]


# -- commands -------------------------------------------------------------------------------------------


def cmd_detect(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from workers.embedded import EmbeddedRunner

    missing = [p for p in args.paths if not Path(p).exists()]
    if missing:
        raise UsageError(f"no such file or folder: {', '.join(missing)}")
    inputs = list(iter_inputs(args.paths))
    runner = EmbeddedRunner.create(models=args.models, database_url=args.database_url)
    writer = Writer(args.format)
    failures = 0
    with (
        runner.scan(uri="cli", kind="detect", total=len(inputs)) as scan,
        tqdm(total=len(inputs), unit="file", file=sys.stderr, disable=not sys.stderr.isatty()) as progress,
    ):
        for path in inputs:
            result = scan.analyze(path)
            failures += result["status"] != "ok"
            writer.write(result)
            progress.update()
    writer.close()
    return EXIT_SOME_FAILED if failures else EXIT_OK


def cmd_models(args: argparse.Namespace) -> int:
    from workers.settings import get_settings

    directory = Path(args.models) if args.models else get_settings().models_dir
    if args.action == "path":
        print(directory)
        return EXIT_OK
    if args.action == "card":
        from pipeline.pack import read_manifest
        from training.modelcard import render

        notes = Path(args.notes).read_text() if args.notes else ""
        print(render(read_manifest(directory), directory, notes), end="")
        return EXIT_OK
    from pipeline.errors import ModelPackError
    from pipeline.pack import compact_pack, read_manifest

    try:
        manifest = compact_pack(directory) if args.action == "compact" else read_manifest(directory)
    except ModelPackError as e:
        raise UsageError(e.reason) from e
    print(f"{manifest.label}  ({directory})")
    print(f"aggregation: {manifest.aggregation.method}   thresholds: {dict(manifest.thresholds)}")
    for m in manifest.members:
        size_mb = (directory / m.file).stat().st_size / 1e6 if (directory / m.file).exists() else float("nan")
        auc = m.metrics.get("test_auc")
        print(
            f"  {m.name:<14} {m.kind:<6} {m.architecture:<14} input {m.input_size[0]}x{m.input_size[1]:<5} "
            f"{size_mb:6.1f} MB  test AUC {'-' if auc is None else f'{auc:.3f}'}"
        )
    return EXIT_OK


def _names(text: str | None) -> list[str]:
    """A comma-separated list option as its non-empty names."""
    return [name for name in (text or "").split(",") if name]


def cmd_train(args: argparse.Namespace) -> int:
    from training.fitting import FitConfig

    if args.kind == "spoofs":
        from training.spoofs import ALL_FAMILIES, build_spoof_dataset

        families = _names(args.families) or ALL_FAMILIES
        print(json.dumps(build_spoof_dataset(args.real, args.out, seed=args.seed, families=families)))
        return EXIT_OK
    config = FitConfig(epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.learning_rate,
                       patience=args.patience, seed=args.seed)  # fmt: skip
    verbose = 1 if sys.stderr.isatty() else 2
    if args.kind == "image" and args.fuse_only:
        from pipeline.errors import DeepscanError
        from training.recipes import refit_image_ensemble

        try:
            manifest = refit_image_ensemble(
                args.data, args.out, target_fpr=args.target_fpr, limit_per_split=args.limit, seed=args.seed,
                drop=_names(args.drop),
            )  # fmt: skip
        except DeepscanError as e:  # a member to drop that the pack lacks, or none left to fuse
            raise UsageError(e.reason) from e
    elif args.kind == "image":
        from training.recipes import MemberPlan, train_image_members

        if args.drop:
            raise UsageError("--drop removes members before a refit: use it with --fuse-only")

        plans = [MemberPlan.parse(p) for p in args.members.split(",")]
        manifest = train_image_members(
            args.data, args.out, plans, config=config, pack_name=args.name, version=args.version,
            target_fpr=args.target_fpr, limit_per_split=args.limit, verbose=verbose,
        )  # fmt: skip
    elif args.kind == "audio" and args.fuse_only:
        from training.recipes import fit_audio_fusion

        manifest = fit_audio_fusion(args.data, args.out, holdout_families=_names(args.holdout_families))
    elif args.kind == "audio" and args.architecture == "logmel_stats":
        from pipeline.audio import AudioFrontEnd
        from training.logmel_stats import train_statistics_member

        if args.feature != "logmel":
            raise UsageError("--architecture logmel_stats reads the logmel front end")
        manifest = train_statistics_member(
            args.data, args.out, front_end=AudioFrontEnd.for_feature("logmel"), hidden=args.hidden,
            copies=args.copies, config=config, holdout_families=_names(args.holdout_families),
            pack_name=args.name, version=args.version, cache_dir=Path(args.out) / "cache", verbose=verbose,
        )  # fmt: skip
    elif args.kind == "audio":
        from pipeline.audio import AudioFrontEnd
        from training.recipes import train_audio_member

        manifest = train_audio_member(
            args.data,
            args.out,
            front_end=AudioFrontEnd.for_feature(args.feature),
            config=config,
            holdout_families=_names(args.holdout_families),
            pack_name=args.name,
            version=args.version,
            verbose=verbose,
        )
    if args.fuse_only and args.version:  # training sets it as it writes the pack; a refit has to here
        from pipeline.pack import write_manifest

        manifest = write_manifest(args.out, dataclasses.replace(manifest, version=args.version))
    print(json.dumps({m.name: dict(m.metrics) for m in manifest.members}, indent=2))
    return EXIT_OK


def cmd_samples(args: argparse.Namespace) -> int:
    from workers.samples import write_samples

    for path in write_samples(args.out):
        print(path)
    return EXIT_OK


def cmd_explain(args: argparse.Namespace) -> int:
    import cv2

    from pipeline.analyze import Analyzer
    from pipeline.errors import DeepscanError
    from pipeline.media import load_image
    from workers.embedded import load_pack

    analyzer = Analyzer(load_pack(args.models))
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    image = Path(args.image)
    try:
        explained = analyzer.explain_image(load_image(image), num_samples=args.samples)
    except DeepscanError as e:
        print(json.dumps({"path": str(image), "status": e.status, "reason": e.reason}))
        return EXIT_SOME_FAILED
    faces = []
    for i, (box, explanation) in enumerate(explained):
        overlay = out_dir / f"{image.stem}_face{i}.png"
        cv2.imwrite(str(overlay), cv2.cvtColor(explanation.overlay, cv2.COLOR_RGB2BGR))
        faces.append(
            {
                "box": box.as_dict(),
                "fake_probability": round(explanation.fake_probability, 6),
                "overlay": str(overlay),
                "top_segments": explanation.top_segments(),
            }
        )
    print(json.dumps({"path": str(image), "status": "ok", "faces": faces}))
    return EXIT_OK


def cmd_evaluate(args: argparse.Namespace) -> int:
    from training.evaluate import ENSEMBLE, evaluate_audio, evaluate_images, plot_roc, to_markdown
    from workers.embedded import load_pack

    pack = load_pack(args.models)
    split = None if args.split == "all" else args.split
    if args.leave_one_out:
        from training.crosseval import sweep_table

        if args.kind != "audio":
            raise UsageError("--leave-one-out sweeps audio families: use it with --kind audio")
        try:
            print(
                sweep_table(
                    args.data, args.out, families=_names(args.families), pack=pack, markdown=args.markdown
                ),
                end="",
            )
        except ValueError as e:
            raise UsageError(str(e)) from e
        return EXIT_OK
    if args.kind == "image" and len(args.data) > 1:
        raise UsageError("evaluate --kind image takes one --data folder")
    try:
        if args.kind == "audio":
            evaluation, unscored = evaluate_audio(pack, args.data, split=split)
            for path, reason in unscored:
                logger.warning("no score for %s: %s", path, reason)
        else:
            evaluation = evaluate_images(pack, args.data[0], split=split)
    except ValueError as e:
        raise UsageError(str(e)) from e
    table = to_markdown(evaluation)
    print(table, end="")
    if args.markdown:
        Path(args.markdown).write_text(
            f"# Evaluation of {pack.manifest.label} on {', '.join(args.data)} ({args.split})\n\n{table}"
        )
    if args.roc:
        plot_roc(evaluation, args.roc)
    best_member = max(
        (r["all"].auc for name, r in evaluation.reports.items() if name != ENSEMBLE), default=float("nan")
    )
    if ENSEMBLE in evaluation.reports:
        logger.info(
            "ensemble AUC %.4f, best member %.4f", evaluation.reports[ENSEMBLE]["all"].auc, best_member
        )
    return EXIT_OK


def cmd_db(args: argparse.Namespace) -> int:
    from db.session import migrate
    from workers.settings import get_settings

    migrate(args.database_url or get_settings().database_url)
    print("database is at the latest schema")
    return EXIT_OK


def cmd_results(args: argparse.Namespace) -> int:
    from db import queries
    from workers.embedded import open_database

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


class ScanProgressReport:
    """Progress of a waited-for scan on stderr: a bar on a terminal, a line per change otherwise."""

    def __init__(self, scan_id: int) -> None:
        from tqdm import tqdm

        self.scan_id, self._last = scan_id, -1
        self._bar = (
            tqdm(unit="object", file=sys.stderr, desc=f"scan {scan_id}") if sys.stderr.isatty() else None
        )

    def __call__(self, progress: ScanProgress) -> None:
        if self._bar is not None:
            self._bar.total = progress.total
            self._bar.n = progress.done
            self._bar.refresh()
        elif progress.done != self._last:
            print(f"scan {self.scan_id}: {progress.done}/{progress.total} objects analysed", file=sys.stderr)
        self._last = progress.done

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def cmd_scan(args: argparse.Namespace) -> int:
    from workers import producer
    from workers.embedded import open_sessions

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


def cmd_worker(args: argparse.Namespace) -> int:
    from workers.celery_app import GPU_QUEUE, LIGHT_QUEUE, app, require_broker
    from workers.embedded import open_sessions
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


def cmd_scans(args: argparse.Namespace) -> int:
    from db import queries
    from workers.embedded import open_database

    with open_database(args.database_url) as session:
        for scan in queries.scan_counts(session):
            print(json.dumps(scan, default=str))
    return EXIT_OK


# -- parser ---------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="deepscan", description="Find deepfakes in images, videos and audio."
    )
    parser.add_argument(
        "--log-level", default=None, help="logging level (default: DEEPSCAN_LOG_LEVEL or WARNING)"
    )
    sub = parser.add_subparsers(dest="command", required=True)

    detect = sub.add_parser("detect", help="analyse files or folders in-process and store the results")
    detect.add_argument("paths", nargs="+", metavar="PATH")
    detect.add_argument(
        "--format", choices=("jsonl", "table", "csv"), default="table" if sys.stdout.isatty() else "jsonl"
    )
    detect.add_argument("--models", metavar="DIR", help="model pack directory (default: the bundled pack)")
    detect.add_argument("--database-url", help="SQLAlchemy URL (default: DEEPSCAN_DATABASE_URL)")
    detect.set_defaults(func=cmd_detect)

    models = sub.add_parser("models", help="the model pack")
    models.add_argument(
        "action", choices=("path", "list", "card", "compact"), help="compact: store the members as float16"
    )
    models.add_argument("--models", metavar="DIR")
    models.add_argument("--notes", metavar="FILE", help="with card: hand-written notes to append")
    models.set_defaults(func=cmd_models)

    train = sub.add_parser("train", help="train pack members")
    train_sub = train.add_subparsers(dest="kind", required=True)
    for kind in ("image", "audio"):
        t = train_sub.add_parser(kind, help=f"train the {kind} member(s) into a pack directory")
        t.add_argument(
            "--data", required=True, metavar="DIR", action="append" if kind == "audio" else "store",
            help="folder with real/ and fake/ subfolders" + ("; audio: also labels.csv (audio/neural) or a "
                 "folder of real speech inside real/; repeat for several datasets" if kind == "audio" else ""),
        )  # fmt: skip
        t.add_argument("--out", required=True, metavar="DIR", help="pack directory (created or updated)")
        t.add_argument("--epochs", type=int, default=20)
        t.add_argument("--batch-size", type=int, default=32)
        t.add_argument("--learning-rate", type=float, default=1e-3)
        t.add_argument("--patience", type=int, default=5)
        t.add_argument("--seed", type=int, default=0)
        t.add_argument("--name", default="deepscan-default")
        t.add_argument(
            "--version", help="pack version to set (default: keep the pack's, 0.1.0 for a new one)"
        )
        t.add_argument(
            "--fuse-only",
            action="store_true",
            help=f"train nothing: refit the fusion of the pack's {kind} members and measure them again",
        )
        t.set_defaults(func=cmd_train)
    image = train_sub.choices["image"]
    image.add_argument(
        "--members",
        default="spectral:128,densenet121:96,profile:256",
        help="comma-separated ARCH:SIZE (xception, inception_v3, resnet50, densenet121, spectral, profile, "
        "spectrum_grid); ARCH+spectrum:SIZE puts a classic backbone over the crop's colour spectra instead of "
        "its pixels, ARCH+residual:SIZE over the high-pass residuals of its colour differences",
    )
    image.add_argument("--target-fpr", type=float, default=None, help="pick the threshold for this val FPR")
    image.add_argument(
        "--drop", metavar="NAMES", help="with --fuse-only: remove these image members (comma-separated) first"
    )
    image.add_argument("--limit", type=int, default=None, help="at most N images per split (smoke runs)")
    audio = train_sub.choices["audio"]
    audio.add_argument("--feature", choices=("logmel", "linear", "cqt"), default="logmel")
    audio.add_argument(
        "--architecture", choices=("audio_cnn", "logmel_stats"), default="audio_cnn",
        help="logmel_stats: per-band log-mel statistics and a small head (member audio_logmel_stats)",
    )  # fmt: skip
    audio.add_argument("--hidden", type=int, default=32, help="logmel_stats: hidden units (0: logistic)")
    audio.add_argument(
        "--copies", type=int, default=1, help="logmel_stats: processed copies of every training clip"
    )
    audio.add_argument(
        "--holdout-families", default="", help="comma-separated spoof families kept out of training"
    )
    spoofs = train_sub.add_parser("spoofs", help="generate a spoof training set from real speech")
    spoofs.add_argument("--real", required=True, metavar="DIR")
    spoofs.add_argument("--out", required=True, metavar="DIR")
    spoofs.add_argument("--seed", type=int, default=0)
    spoofs.add_argument(
        "--families", help="comma-separated families to make (default: all); real clips are always written"
    )
    spoofs.set_defaults(func=cmd_train)

    samples = sub.add_parser("samples", help="write sample media (public-domain stills, synthetic speech)")
    samples.add_argument("out", metavar="DIR")
    samples.set_defaults(func=cmd_samples)

    explain = sub.add_parser(
        "explain", help="LIME: which regions of each face drove its score (PNG overlays)"
    )
    explain.add_argument("image", metavar="IMAGE")
    explain.add_argument("--out", required=True, metavar="DIR", help="where the overlays are written")
    explain.add_argument("--models", metavar="DIR")
    explain.add_argument("--samples", type=int, default=400, help="perturbed crops per face (default 400)")
    explain.set_defaults(func=cmd_explain)

    evaluate = sub.add_parser("evaluate", help="measure a pack on labelled face crops or audio clips")
    evaluate.add_argument(
        "--data", required=True, metavar="DIR", action="append", help="repeat for several audio datasets"
    )
    evaluate.add_argument(
        "--kind",
        choices=("image", "audio"),
        default="image",
        help="image: face crops; audio: clips under real/ and fake/<family>/ (EER per family)",
    )
    evaluate.add_argument("--models", metavar="DIR")
    evaluate.add_argument(
        "--split",
        choices=("test", "val", "train", "all"),
        default="test",
        help="which part of the training split scheme to score (default: test, kept apart)",
    )
    evaluate.add_argument("--markdown", metavar="FILE", help="also write the table as markdown")
    evaluate.add_argument("--roc", metavar="PNG", help="write ROC curves of every member and the ensemble")
    evaluate.add_argument(
        "--leave-one-out", action="store_true",
        help="audio: for every spoof family, train logmel_stats members without it and test on it; "
        "--models is scored alongside as it is",
    )  # fmt: skip
    evaluate.add_argument("--families", help="with --leave-one-out: only these families (comma-separated)")
    evaluate.add_argument(
        "--out", default="build/crosseval", metavar="DIR", help="with --leave-one-out: folds, cache, scores"
    )
    evaluate.set_defaults(func=cmd_evaluate)

    db = sub.add_parser("db", help="database schema")
    db.add_argument("action", choices=("upgrade",))
    db.add_argument("--database-url")
    db.set_defaults(func=cmd_db)

    results = sub.add_parser("results", help="query stored results")
    results.add_argument("--scan", type=int)
    results.add_argument("--label", choices=("fake", "real"))
    results.add_argument("--status")
    results.add_argument("--min-probability", type=float)
    results.add_argument("--format", choices=("jsonl", "table", "csv"), default="jsonl")
    results.add_argument("--database-url")
    results.set_defaults(func=cmd_results)

    scan = sub.add_parser("scan", help="queue a bucket prefix or folder for the workers (distributed)")
    scan.add_argument("uri", metavar="URI", help="s3://bucket/prefix or a local folder")
    scan.add_argument("--wait", action="store_true", help="wait until every object has its result")
    scan.add_argument("--force", action="store_true", help="re-analyse objects already analysed")
    scan.add_argument(
        "--timeout", type=float, default=None, metavar="S", help="with --wait: give up after S s"
    )
    scan.add_argument("--poll", type=float, default=1.0, metavar="S", help=argparse.SUPPRESS)
    scan.set_defaults(func=cmd_scan)

    worker = sub.add_parser("worker", help="run a worker of the distributed scanner")
    worker.add_argument("--queues", default="light,gpu", help="light, gpu, or both (default: both)")
    worker.add_argument("--concurrency", type=int, default=None, help="processes (default: one per core)")
    worker.add_argument("--pool", default="prefork", choices=("prefork", "solo", "threads"))
    worker.add_argument("--hostname", default=f"deepscan-{os.getpid()}@%h", help="node name, unique per host")
    worker.set_defaults(func=cmd_worker)

    beat = sub.add_parser("beat", help="run the scheduler of DEEPSCAN_SCHEDULES (incremental scans)")
    beat.add_argument("--schedule-file", default="celerybeat-schedule", help="where beat keeps its state")
    beat.set_defaults(func=cmd_beat)

    scans = sub.add_parser("scans", help="list scans with their counts")
    scans.add_argument("--database-url")
    scans.set_defaults(func=cmd_scans)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    _quiet_frameworks()
    parser = build_parser()
    args = parser.parse_args(argv)
    from workers.settings import get_settings

    level = args.log_level or get_settings().log_level
    logging.basicConfig(
        level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
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


if __name__ == "__main__":
    sys.exit(main())
