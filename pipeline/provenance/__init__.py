"""Provenance: what a file says about where it came from, beside what the detectors guess from its pixels.

Four readers, each turning what it finds into ``Finding`` s (``evidence``):

- ``credentials``: C2PA manifests (``c2pa-python``) in JPEG, PNG, WebP, TIFF, MP4/MOV, WAV, MP3 and the
  other formats the library reads; only a trusted manifest's claims are verified;
- ``metadata``: XMP, EXIF, IPTC-IIM and the PNG text chunks of known generators;
- ``watermark``: the invisible watermarks of open generators, decoded from pixels.

Everything here takes the bytes the media module read, a path it was given, or decoded pixels, and never
raises for bad input: what cannot be read is no evidence, or ``credentials: unreadable``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from pipeline.provenance.credentials import read_c2pa
from pipeline.provenance.evidence import (
    CredentialState,
    Finding,
    FindingKind,
    Provenance,
    ProvenanceClass,
    ProvenanceOptions,
    VerdictPolicy,
    decide,
)
from pipeline.provenance.metadata import image_metadata
from pipeline.provenance.watermark import find_watermarks

__all__ = [
    "CredentialState",
    "Finding",
    "FindingKind",
    "Provenance",
    "ProvenanceClass",
    "ProvenanceOptions",
    "VerdictPolicy",
    "decide",
    "read_provenance",
    "watermark_findings",
]

logger = logging.getLogger(__name__)


def read_provenance(
    source: bytes | Path, *, media_type: str, trust_anchors_pem: str | None = None
) -> Provenance:
    """Provenance from a file's bytes (images: what ``pipeline.media.read_file`` returned) or its path
    (video and audio, which C2PA reads as a stream). Never raises: a reader that fails on input it was not
    written for is logged and contributes nothing, and the verdict goes on without it."""
    try:
        credentials, findings = read_c2pa(source, trust_anchors_pem=trust_anchors_pem)
    except Exception:  # a failure of the native library we did not foresee
        logger.exception("C2PA reading failed")
        credentials, findings = CredentialState.UNREADABLE, []
    if isinstance(source, bytes) and media_type == "image":
        try:
            metadata = list(image_metadata(source))
        except Exception:  # a metadata layout we did not foresee
            logger.exception("image metadata reading failed")
            metadata = []
        findings.extend(metadata)
        reference = next((f for f in metadata if f.kind == FindingKind.XMP_PROVENANCE), None)
        if credentials == CredentialState.ABSENT and reference is not None:
            remote = reference.value.startswith(("http://", "https://"))
            credentials = CredentialState.REMOTE if remote else CredentialState.STRIPPED
    return Provenance(findings=tuple(findings), credentials=credentials)


def watermark_findings(rgb: np.ndarray) -> list[Finding]:
    """Findings for the known invisible watermarks in an RGB uint8 image (H, W, 3)."""
    return [
        Finding(
            FindingKind.WATERMARK,
            match.message.name,
            indicates=ProvenanceClass.AI,
            detail=f"imwatermark dwtDct, {match.matching_bits} of {len(match.message.bits)} bits match "
            f"({match.channel_order.upper()} order)",
        )
        for match in find_watermarks(rgb)
    ]
