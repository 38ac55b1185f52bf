"""``deepscan detect``, ``explain`` and ``samples``: analyse files in this process."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from workers.cli.helpers import EXIT_OK, EXIT_SOME_FAILED, Subparsers, sigterm_unwinds
from workers.cli.output import Writer
from workers.errors import UsageError

if TYPE_CHECKING:
    from workers.storage import ObjectRef


def register(sub: Subparsers) -> None:
    detect = sub.add_parser(
        "detect", help="analyse files, folders or s3:// objects in this process and store the results"
    )
    detect.add_argument(
        "paths", nargs="+", metavar="PATH", help="a file, a folder (recursively), s3://bucket/key or a prefix"
    )
    detect.add_argument(
        "--format", choices=("jsonl", "table", "csv"), default="table" if sys.stdout.isatty() else "jsonl"
    )
    detect.add_argument("--models", metavar="DIR", help="model pack directory (default: the bundled pack)")
    detect.add_argument("--database-url", help="SQLAlchemy URL (default: DEEPSCAN_DATABASE_URL)")
    detect.set_defaults(func=cmd_detect)

    explain = sub.add_parser(
        "explain", help="LIME: which regions of each face drove its score (PNG overlays)"
    )
    explain.add_argument("image", metavar="IMAGE")
    explain.add_argument("--out", required=True, metavar="DIR", help="where the overlays are written")
    explain.add_argument("--models", metavar="DIR")
    explain.add_argument(
        "--samples",
        type=int,
        default=None,
        help="perturbed crops per face (default: DEEPSCAN_EXPLAIN_SAMPLES, 64)",
    )
    explain.set_defaults(func=cmd_explain)

    samples = sub.add_parser("samples", help="write sample media (public-domain stills, synthetic speech)")
    samples.add_argument("out", metavar="DIR")
    samples.add_argument(
        "--upload",
        metavar="S3_URI",
        help="then put every file below DIR (and a zip of the samples) under s3://bucket/prefix",
    )
    samples.set_defaults(func=cmd_samples)


def iter_inputs(paths: Sequence[str]) -> Iterator[Path | ObjectRef]:
    """Files named directly, every file below named folders (recursively, sorted), and the S3 objects
    named (``s3://bucket/key``, or everything below a prefix)."""
    from workers.settings import get_settings
    from workers.storage import find_s3_objects

    for raw in paths:
        if raw.startswith("s3://"):
            yield from find_s3_objects(raw, endpoint_url=get_settings().s3_endpoint_url)
            continue
        path = Path(raw)
        if path.is_dir():
            yield from (p for p in sorted(path.rglob("*")) if p.is_file())
        else:
            yield path


@sigterm_unwinds()
def cmd_detect(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from db.models import ScanKind
    from workers.checks import require_media_programs
    from workers.cli.helpers import import_backend_quietly
    from workers.embedded import EmbeddedRunner

    missing = [p for p in args.paths if not p.startswith("s3://") and not Path(p).exists()]
    if missing:
        raise UsageError(f"no such file or folder: {', '.join(missing)}")
    require_media_programs()
    inputs = list(iter_inputs(args.paths))
    import_backend_quietly()
    runner = EmbeddedRunner.create(models=args.models, database_url=args.database_url)
    writer = Writer(args.format)
    failures = 0
    with (
        runner.scan(uri="cli", kind=ScanKind.DETECT, total=len(inputs)) as scan,
        tqdm(total=len(inputs), unit="file", file=sys.stderr, disable=not sys.stderr.isatty()) as progress,
    ):
        for item in inputs:
            result = scan.analyze(item) if isinstance(item, Path) else scan.analyze_object(item)
            failures += result["status"] != "ok"
            writer.write(result)
            progress.update()
    writer.close()
    return EXIT_SOME_FAILED if failures else EXIT_OK


def cmd_explain(args: argparse.Namespace) -> int:
    import cv2

    from pipeline.analyze import Analyzer
    from pipeline.errors import DeepscanError
    from pipeline.faces import FaceDetector
    from pipeline.media import load_image
    from workers.resources import detector_options, load_pack
    from workers.settings import get_settings

    analyzer = Analyzer(load_pack(args.models), FaceDetector(detector_options()))
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    image = Path(args.image)
    try:
        samples = args.samples or get_settings().explain_samples
        explained = analyzer.explain_image(load_image(image), num_samples=samples)
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


def cmd_samples(args: argparse.Namespace) -> int:
    from workers.samples import write_samples

    for path in write_samples(args.out):
        print(path)
    if args.upload:
        from workers.samples import upload_samples
        from workers.settings import get_settings

        for uri in upload_samples(Path(args.out), args.upload, endpoint_url=get_settings().s3_endpoint_url):
            print(uri)
    return EXIT_OK
