"""MODEL_CARD.md for a pack, rendered from the figures its manifest carries (measured at training time on
the test split), so no number in a card is typed by hand.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pipeline.pack import Manifest
from training.metrics import CONFIDENCE_LEVEL

FIGURES = ("n", "n_fake", "auc", "eer", "accuracy", "f1", "ece")
_LEVEL = f"{100 * CONFIDENCE_LEVEL:.0f} %"


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return "nan" if value != value else f"{value:.3f}"
    return str(value)


def _rates(values: dict[str, Any]) -> dict[str, Any]:
    """False- and true-positive rates at the threshold; the FPR from the confusion matrix ((tn, fp), (fn, tp))."""
    (tn, fp), _ = values["confusion"]
    return {"fpr": fp / (tn + fp) if tn + fp else float("nan"), "tpr": values["recall"]}


def _interval(values: dict[str, Any]) -> str:
    """The AUC's confidence interval; '-' in manifests written before reports carried one."""
    low, high = values.get("auc_low"), values.get("auc_high")
    return "-" if low is None or high is None else f"{_fmt(low)}-{_fmt(high)}"


def _figure_table(figures: dict[str, dict[str, Any]]) -> list[str]:
    columns = (*FIGURES, "fpr", "tpr")
    header = [c if c != "auc" else f"auc | {_LEVEL} CI" for c in columns]
    lines = ["| subset | " + " | ".join(header) + " |", "|---" * (len(columns) + 2) + "|"]
    for subset, values in figures.items():
        row = {**values, **_rates(values)}
        cells = [
            _fmt(row.get(k)) if k != "auc" else f"{_fmt(row.get(k))} | {_interval(row)}" for k in columns
        ]
        lines.append(f"| {subset} | " + " | ".join(cells) + " |")
    return lines


def _against_best_member(comparison: dict[str, dict[str, Any]]) -> list[str]:
    lines = [
        "",
        f"Ensemble against the best member of each subset (paired DeLong test, {_LEVEL} interval of the "
        "AUC difference; an interval that includes 0 means this split cannot tell the two apart):",
        "",
        "| subset | best member | AUC ensemble - member | interval |",
        "|---|---|---|---|",
    ]
    for subset, c in comparison.items():
        lines.append(
            f"| {subset} | {c['member']} | {c['difference']:+.3f} | {c['low']:+.3f} to {c['high']:+.3f} |"
        )
    return lines


def _member_contribution(contributions: dict[str, dict[str, Any]]) -> list[str]:
    lines = [
        "",
        "What each member adds (the stacking refitted on validation without it; paired DeLong test of "
        f"AUC(ensemble) - AUC(ensemble without it) on all test faces, {_LEVEL} interval; an interval above 0: "
        "the member earns its place on this split):",
        "",
        "| member | AUC without it | ensemble - without | interval |",
        "|---|---|---|---|",
    ]
    for name, c in contributions.items():
        lines.append(
            f"| {name} | {c['without_auc']:.3f} | {c['difference']:+.3f} | {c['low']:+.3f} to {c['high']:+.3f} |"
        )
    return lines


def _size(megabytes: float) -> str:
    return f"{megabytes:.1f} MB" if megabytes >= 0.1 else f"{1000 * megabytes:.0f} kB"


def _percent(value: Any) -> str:
    return "-" if value is None else f"{100 * value:.1f} %"


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}


def render(manifest: Manifest, directory: Path, notes: str = "") -> str:
    """The card as markdown. ``notes``: hand-written context (data provenance, limitations) appended."""
    info = dict(manifest.info)
    lines = [
        f"# Model card: {manifest.label}",
        "",
        f"Aggregation: `{manifest.aggregation.method}`; thresholds: "
        + ", ".join(f"{k} {v:.3f}" for k, v in manifest.thresholds.items())
        + ". Figures below were measured on the **test split**, which neither training, early stopping nor"
        " the aggregation fit saw (split: sha1 of each file's path, or of its cluster where a dataset names the clip"
        " a fake was made from, 70/15/15).",
        "",
        "## Members",
        "",
        "| member | kind | architecture | input | file size | training | best epoch | its val AUC | val AUC "
        "| test AUC |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for m in manifest.members:
        size = (directory / m.file).stat().st_size / 1e6
        metrics = dict(m.metrics)
        config = _read_json(directory / f"{m.name}.report.json").get("config") or {}
        training = (
            f"{config['epochs']} epochs max, patience {config['patience']}, lr {config['learning_rate']:g}"
            if config
            else "-"
        )
        lines.append(
            f"| {m.name} | {m.kind} | {m.architecture} | {m.input_size[0]}x{m.input_size[1]} | {_size(size)} "
            f"| {training} | {metrics.get('best_epoch', '-')} | {_fmt(metrics.get('val_auc'))} "
            f"| {_fmt(metrics.get('split_val_auc'))} | {_fmt(metrics.get('test_auc'))} |"
        )
    lines += [
        "",
        "*its val AUC*: at the best epoch, on the validation split of the member's own training (for a member"
        " carried over from an earlier pack, that pack's split). *val AUC* and *test AUC*: on this pack's"
        " split, the validation split being the one the members' fusion was fitted on (image members: per"
        " face; audio members: per clip, the mean of its windows; - where the pack was fused before this"
        " column existed).",
    ]
    image = info.get("image_training")
    if image:
        lines += [
            "",
            "## Image ensemble",
            "",
            f"Data: `{image['data']}`, split sizes {image['split']}; target false-positive rate for the "
            f"threshold: {image.get('target_fpr') or 'none (0.5)'}. Sources cut as tight face boxes (given a "
            f"mirrored margin): {', '.join(image.get('tight_sources') or []) or 'none'}; pseudo-fakes in "
            f"training: {image.get('pseudo_fakes') or 'none'}.",
            "",
            f"Ensemble (`{manifest.aggregation.method}`) at threshold {manifest.threshold('image'):.3f}:",
            "",
        ]
        lines += _figure_table(image["test_ensemble"])
        if image.get("test_against_best_member"):
            lines += _against_best_member(image["test_against_best_member"])
        if image.get("test_member_contribution"):
            lines += _member_contribution(image["test_member_contribution"])
        lines += ["", "Plain mean of the members at 0.5, for comparison:", ""]
        lines += _figure_table(image["test_mean"])
        members = image.get("members") or {
            m.name: _read_json(directory / f"{m.name}.report.json").get("test")
            for m in manifest.image_members
        }
        for name, figures in members.items():
            if figures:
                lines += ["", f"Member `{name}` alone (threshold 0.5):", ""]
                lines += _figure_table(figures)
    audio = info.get("audio_training")
    if audio:
        held = ", ".join(audio.get("holdout_families") or []) or "none"
        lines += [
            "",
            "## Audio",
            "",
            f"Data: `{audio['data']}`, clips per split {audio['split_clips']}. "
            f"Spoof families held out of training and validation: {held}.",
            f"Window scores of the {len(manifest.audio_members)} audio member(s) are fused by "
            f"`{manifest.audio_aggregation.method}` (fitted on validation windows); clip score = mean of the "
            f"fused windows; threshold {manifest.threshold('audio'):.3f} (validation EER point).",
            "",
        ]
        lines += _figure_table(audio["test_clips"])
        scorers = {"fusion": audio["test_clips"], **(audio.get("members") or {})}
        subsets = [k for k in audio["test_clips"] if k != "all"]
        lines += [
            "",
            "Test EER per spoof family (each family against all real test clips), fusion and members alone:",
            "",
            "| scorer | all | " + " | ".join(subsets) + " |",
            "|---" * (len(subsets) + 2) + "|",
        ]
        for scorer, figures in scorers.items():
            cells = [_percent(figures.get(k, {}).get("eer")) for k in ("all", *subsets)]
            lines.append(f"| {scorer} | " + " | ".join(cells) + " |")
    if notes:
        lines += ["", notes.strip()]
    return "\n".join(lines) + "\n"
