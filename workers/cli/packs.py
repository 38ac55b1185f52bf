"""``deepscan train``, ``evaluate`` and ``models``: make, measure and inspect model packs."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.audio import FEATURES
from pipeline.errors import DeepscanError
from workers.cli.helpers import EXIT_OK, Subparsers
from workers.cli.output import format_pack
from workers.errors import UsageError

if TYPE_CHECKING:
    from pipeline.pack import ModelPack
    from training.fitting import FitConfig
    from training.pseudofakes import PseudoFakes
    from training.recipes import MemberPlan

logger = logging.getLogger("deepscan")


def register(sub: Subparsers) -> None:
    train = sub.add_parser("train", help="train pack members")
    train_sub = train.add_subparsers(dest="kind", required=True)
    for kind in ("image", "audio"):
        t = train_sub.add_parser(kind, help=f"train the {kind} member(s) into a pack directory")
        t.add_argument(
            "--data",
            required=True,
            metavar="DIR",
            action="append",
            help="folder with real/ and fake/ subfolders; repeat for several datasets"
            + (
                "; audio: also labels.csv (audio/neural) or a folder of real speech inside real/"
                if kind == "audio"
                else "; a manifest.csv with an original column keeps each clip's faces on one side of the split"
            ),
        )
        t.add_argument("--out", required=True, metavar="DIR", help="pack directory (created or updated)")
        _add_fit_options(t)
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
    _add_face_training_options(image)
    image.add_argument("--target-fpr", type=float, default=None, help="pick the threshold for this val FPR")
    image.add_argument(
        "--drop", metavar="NAMES", help="with --fuse-only: remove these image members (comma-separated) first"
    )
    audio = train_sub.choices["audio"]
    audio.add_argument(
        "--feature",
        choices=FEATURES,
        default="logmel",
        help="the front end: a log spectrogram (audio_cnn), or waveform (the raw_cnn member)",
    )
    audio.add_argument(
        "--architecture",
        choices=("audio_cnn", "raw_cnn", "logmel_stats"),
        help="default: audio_cnn over a spectrogram, raw_cnn over the waveform; logmel_stats: per-band "
        "log-mel statistics and a small head (member audio_logmel_stats)",
    )
    audio.add_argument(
        "--member-name",
        metavar="NAME",
        help="the member's name in the pack (letters, digits, _; default audio_<feature>, or "
        "audio_logmel_stats; an audio member of that name is replaced, others stay and are fused with it)",
    )
    audio.add_argument("--hidden", type=int, default=32, help="logmel_stats: hidden units (0: logistic)")
    audio.add_argument(
        "--copies",
        type=int,
        default=1,
        help="processed copies of every training clip (class-neutral degradations)",
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
    evaluate.add_argument(
        "--through-detector",
        action="store_true",
        help="image: score each file as `deepscan detect` does (its largest detected face, cut from the file) "
        "instead of as a training crop; files without a detected face are left out and counted",
    )
    evaluate.add_argument("--markdown", metavar="FILE", help="also write the table as markdown")
    evaluate.add_argument("--roc", metavar="PNG", help="write ROC curves of every member and the ensemble")
    evaluate.add_argument(
        "--leave-one-out",
        action="store_true",
        help="audio: for every spoof family, train logmel_stats members without it and test on it; image: "
        "for every source, train --members without it and test on it; --models is scored alongside as it is",
    )
    evaluate.add_argument(
        "--families", help="with --leave-one-out: only these families or image sources (comma-separated)"
    )
    evaluate.add_argument(
        "--out", default="build/crosseval", metavar="DIR", help="with --leave-one-out: folds, cache, scores"
    )
    evaluate.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME",
        help="audio with --leave-one-out, repeatable: a member variant trained in every fold (default all: "
        "logmel_stats, 'logmel_stats, no copies', 'logmel_stats, logistic', audio_cnn, raw_cnn)",
    )
    _add_face_training_options(evaluate)
    _add_fit_options(evaluate)
    evaluate.set_defaults(func=cmd_evaluate)

    models = sub.add_parser("models", help="the model pack")
    models.add_argument(
        "action",
        choices=("path", "list", "card", "compact", "push", "pull"),
        help="compact: store the members as float16; push: upload the pack to --uri; pull: download and "
        "verify the pack at --uri into DEEPSCAN_MODELS_CACHE_DIR and print its directory",
    )
    models.add_argument("--models", metavar="DIR")
    models.add_argument(
        "--uri",
        metavar="S3_URI",
        help="with push and pull: s3://bucket/prefix (default: DEEPSCAN_MODELS_URI)",
    )
    models.add_argument("--notes", metavar="FILE", help="with card: hand-written notes to append")
    models.set_defaults(func=cmd_models)


def _add_fit_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--patience", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)


def _add_face_training_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--members",
        default="spectral:128,densenet121:96,profile:256",
        help="comma-separated ARCH:SIZE (xception, inception_v3, resnet50, densenet121, spectral, profile, "
        "spectrum_grid); ARCH+spectrum:SIZE puts a classic backbone over the crop's colour spectra instead of "
        "its pixels, ARCH+residual:SIZE over the high-pass residuals of its colour differences",
    )
    parser.add_argument(
        "--crop-geometry",
        default="margin",
        help="what the members see: margin (the crop, the face box with a 1.3x margin) or tight (the box alone)",
    )
    parser.add_argument(
        "--tight-sources",
        metavar="NAMES",
        help="sources whose crops are the face box alone (comma-separated, e.g. dfdc); they get a mirrored "
        "margin so that every crop has the pipeline's form",
    )
    parser.add_argument(
        "--pseudo-fakes",
        type=float,
        default=0.0,
        metavar="P",
        help="each real training face also joins its batch as a self-blended image or a local edit with "
        "probability P (0: none)",
    )
    parser.add_argument("--limit", type=int, default=None, help="at most N images per split (smoke runs)")


def _face_plans(args: argparse.Namespace) -> list[MemberPlan]:
    from training.recipes import MemberPlan

    return [
        dataclasses.replace(MemberPlan.parse(p), crop_geometry=args.crop_geometry)
        for p in _names(args.members)
    ]


def _fit_config(args: argparse.Namespace) -> FitConfig:
    from training.fitting import FitConfig

    return FitConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        patience=args.patience,
        seed=args.seed,
    )


def _pseudo_fakes(args: argparse.Namespace) -> PseudoFakes | None:
    from training.pseudofakes import PseudoFakes

    return PseudoFakes(probability=args.pseudo_fakes) if args.pseudo_fakes > 0 else None


def _names(text: str | None) -> list[str]:
    """A comma-separated list option as its non-empty names."""
    return [name for name in (text or "").split(",") if name]


def cmd_train(args: argparse.Namespace) -> int:
    if args.kind == "spoofs":
        from training.spoofs import ALL_FAMILIES, build_spoof_dataset

        families = _names(args.families) or ALL_FAMILIES
        print(json.dumps(build_spoof_dataset(args.real, args.out, seed=args.seed, families=families)))
        return EXIT_OK
    config = _fit_config(args)
    verbose = 1 if sys.stderr.isatty() else 2
    if args.kind == "image" and args.fuse_only:
        from training.recipes import refit_image_ensemble

        try:
            manifest = refit_image_ensemble(
                args.data,
                args.out,
                tight_sources=_names(args.tight_sources),
                target_fpr=args.target_fpr,
                limit_per_split=args.limit,
                seed=args.seed,
                drop=_names(args.drop),
            )
        except DeepscanError as e:  # a member to drop that the pack lacks, or none left to fuse
            raise UsageError(e.reason) from e
    elif args.kind == "image":
        from training.recipes import train_image_members

        if args.drop:
            raise UsageError("--drop removes members before a refit: use it with --fuse-only")
        manifest = train_image_members(
            args.data,
            args.out,
            _face_plans(args),
            tight_sources=_names(args.tight_sources),
            pseudo_fakes=_pseudo_fakes(args),
            config=config,
            pack_name=args.name,
            version=args.version,
            target_fpr=args.target_fpr,
            limit_per_split=args.limit,
            verbose=verbose,
        )
    elif args.kind == "audio" and args.member_name and not re.fullmatch(r"[A-Za-z0-9_]+", args.member_name):
        raise UsageError(f"--member-name {args.member_name!r}: letters, digits and _ only (it names a file)")
    elif args.kind == "audio" and args.fuse_only:
        if args.member_name:
            raise UsageError("--member-name names a member to train: --fuse-only trains none")
        from training.recipes import fit_audio_fusion

        manifest = fit_audio_fusion(args.data, args.out, holdout_families=_names(args.holdout_families))
    elif args.kind == "audio" and args.architecture == "logmel_stats":
        from pipeline.audio import AudioFrontEnd
        from training.logmel_stats import train_statistics_member

        if args.feature != "logmel":
            raise UsageError("--architecture logmel_stats reads the logmel front end")
        manifest = train_statistics_member(
            args.data,
            args.out,
            front_end=AudioFrontEnd.for_feature("logmel"),
            hidden=args.hidden,
            copies=args.copies,
            config=config,
            holdout_families=_names(args.holdout_families),
            name=args.member_name or "audio_logmel_stats",
            pack_name=args.name,
            version=args.version,
            cache_dir=Path(args.out) / "cache",
            verbose=verbose,
        )
    elif args.kind == "audio":
        from pipeline.audio import AudioFrontEnd
        from training.recipes import audio_member_builder, train_audio_member

        front_end = AudioFrontEnd.for_feature(args.feature)
        architecture, _ = audio_member_builder(front_end)
        if args.architecture not in (None, architecture):
            raise UsageError(f"--feature {args.feature} is read by {architecture}, not {args.architecture}")
        manifest = train_audio_member(
            args.data,
            args.out,
            front_end=front_end,
            config=config,
            holdout_families=_names(args.holdout_families),
            copies=args.copies,
            name=args.member_name,
            pack_name=args.name,
            version=args.version,
            cache_dir=Path(args.out) / "cache",
            verbose=verbose,
        )
    if args.fuse_only and args.version:  # training sets it as it writes the pack; a refit has to here
        from pipeline.pack import write_manifest

        manifest = write_manifest(args.out, dataclasses.replace(manifest, version=args.version))
    print(json.dumps({m.name: dict(m.metrics) for m in manifest.members}, indent=2))
    return EXIT_OK


def cmd_evaluate(args: argparse.Namespace) -> int:
    from training.evaluate import ENSEMBLE, evaluate_audio, evaluate_images, plot_roc, to_markdown
    from workers.resources import load_pack

    pack = load_pack(args.models)
    split = None if args.split == "all" else args.split
    if args.leave_one_out and args.kind == "image":
        return _leave_one_source_out(args, pack)
    if args.leave_one_out:
        from training.crosseval import sweep_table

        try:
            table = sweep_table(
                args.data,
                args.out,
                families=_names(args.families),
                variants=args.variant,
                pack=pack,
                markdown=args.markdown,
            )
        except ValueError as e:
            raise UsageError(str(e)) from e
        print(table, end="")
        return EXIT_OK
    try:
        if args.kind == "audio":
            evaluation, unscored = evaluate_audio(pack, args.data, split=split)
            for path, reason in unscored:
                logger.warning("no score for %s: %s", path, reason)
        else:
            evaluation, missed = evaluate_images(
                pack,
                args.data,
                tight_sources=_names(args.tight_sources),
                split=split,
                through_detector=args.through_detector,
            )
            if args.through_detector:
                n = len(missed) + len(evaluation.labels)
                logger.warning("no face found in %d of %d images (left out)", len(missed), n)
                for path in missed:
                    logger.info("no face found in %s", path)
    except (ValueError, DeepscanError) as e:
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


def _leave_one_source_out(args: argparse.Namespace, pack: ModelPack) -> int:
    from training.face_crosseval import leave_one_source_out, to_markdown

    try:
        table = leave_one_source_out(
            args.data,
            _face_plans(args),
            args.out,
            tight_sources=_names(args.tight_sources),
            pseudo_fakes=_pseudo_fakes(args),
            config=_fit_config(args),
            sources=_names(args.families),
            pack=pack,
            limit_per_split=args.limit,
            verbose=1 if sys.stderr.isatty() else 2,
        )
    except (ValueError, DeepscanError) as e:
        raise UsageError(str(e)) from e
    text = to_markdown(table)
    print(text, end="")
    if args.markdown:
        Path(args.markdown).write_text(text)
    return EXIT_OK


def cmd_models(args: argparse.Namespace) -> int:

    if args.action in ("push", "pull"):
        return _push_or_pull(args)
    from workers.resources import pack_directory

    directory = Path(args.models) if args.models else pack_directory()
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
    print(format_pack(manifest, directory))
    return EXIT_OK


def _push_or_pull(args: argparse.Namespace) -> int:
    from pipeline.errors import ModelPackError
    from workers.errors import StorageError
    from workers.modelstore import pull_pack, push_pack
    from workers.settings import get_settings

    settings = get_settings()
    uri = args.uri or settings.models_uri
    if not uri:
        raise UsageError(f"models {args.action} needs --uri s3://bucket/prefix or DEEPSCAN_MODELS_URI")
    try:
        if args.action == "push":
            directory = Path(args.models) if args.models else settings.models_dir
            manifest = push_pack(directory, uri, endpoint_url=settings.s3_endpoint_url)
            print(json.dumps({"pushed": manifest.label, "from": str(directory), "to": uri}))
        else:
            cache_dir = Path(args.models) if args.models else settings.models_cache_dir
            print(pull_pack(uri, cache_dir=cache_dir, endpoint_url=settings.s3_endpoint_url))
    except (ModelPackError, StorageError) as e:
        raise UsageError(f"models {args.action} {uri}: {e.reason}") from e
    return EXIT_OK
