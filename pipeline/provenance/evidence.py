"""The vocabulary of provenance: findings, their kinds, what they point to, and how they sum up.

A ``Finding`` is one piece of evidence; ``Provenance`` is all of them for one file with its C2PA credential
state and their summary (``ai``, ``camera`` or ``none``, and whether a verified claim carries it);
``decide`` says what a ``VerdictPolicy`` lets that summary do to a verdict.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import Any

# IPTC Digital Source Type terms (NewsCodes, 2024 vocabulary). Generated or partly generated content:
AI_SOURCE_TYPES = frozenset(
    {
        "trainedAlgorithmicMedia",
        "compositeWithTrainedAlgorithmicMedia",
        "algorithmicMedia",
        "compositeSynthetic",
    }
)
# Captured from the world by a camera or a scanner of film. Not "print" (a scan of any print), not
# "screenCapture", "digitalCreation", "humanEdits" or the others: they are reported, and point nowhere.
CAMERA_SOURCE_TYPES = frozenset(
    {"digitalCapture", "computationalCapture", "compositeCapture", "negativeFilm", "positiveFilm"}
)
# Software names of generators, as tools write them into EXIF Software, XMP CreatorTool or a claim generator.
GENERATOR_SOFTWARE = re.compile(
    r"\b(stable[ _-]?diffusion|sdxl|novelai|midjourney|dall[-·\s]?e|firefly|comfyui|invokeai|automatic1111"
    r"|fooocus|imagen|black forest labs|flux(?:\.\d)?|ideogram|leonardo\.ai|runway(?:ml)?|sora|openai)\b",
    re.IGNORECASE,
)
MAX_VALUE_CHARS = 200  # a finding is a label, not a copy of the file's metadata (ComfyUI graphs run to MBs)
MAX_DETAIL_CHARS = 300


class ProvenanceClass(str, Enum):
    """What the evidence points to: generated (``ai``), captured by a camera (``camera``), or ``none``."""

    AI = "ai"
    CAMERA = "camera"
    NONE = "none"

    def __str__(self) -> str:
        return self.value


class CredentialState(str, Enum):
    """The state of a file's Content Credentials (C2PA)."""

    ABSENT = "absent"  # none embedded, none referred to
    TRUSTED = "trusted"  # signature and hashes valid, chain ends at a configured trust anchor: verified
    UNTRUSTED = "untrusted"  # signature and hashes valid, the certificate is not trusted
    INVALID = "invalid"  # a signature or a content hash does not match: the file changed after signing
    STRIPPED = "stripped"  # the XMP refers to a manifest that the file no longer carries
    REMOTE = "remote"  # the manifest lives at a URL the file names; deepscan never fetches it
    UNREADABLE = "unreadable"  # C2PA data is there but could not be parsed

    def __str__(self) -> str:
        return self.value


class FindingKind(str, Enum):
    C2PA_MANIFEST = "c2pa.manifest"  # value: the CredentialState; detail: signer, failure codes
    C2PA_CLAIM_GENERATOR = "c2pa.claim_generator"
    C2PA_ACTION = "c2pa.action"  # value: the action (c2pa.created...); detail: its software agent
    C2PA_SOURCE_TYPE = "c2pa.digital_source_type"  # value: the IPTC term of an action
    XMP_SOURCE_TYPE = "xmp.digital_source_type"  # Iptc4xmpExt:DigitalSourceType
    XMP_PROVENANCE = "xmp.provenance"  # dcterms:provenance, a reference to a manifest
    SOFTWARE = "software"  # EXIF Software, XMP CreatorTool, PNG Software, IPTC originating program
    CAMERA_MAKE = "exif.make"
    CAMERA_MODEL = "exif.model"
    GENERATOR = "generator.parameters"  # a generator's own metadata: PNG text chunks, EXIF UserComment
    WATERMARK = "watermark"  # a known invisible watermark

    def __str__(self) -> str:
        return self.value


class VerdictPolicy(str, Enum):
    """How provenance may change a verdict (README, "Provenance"). Unverified evidence never does."""

    OFF = "off"  # provenance is not read
    REPORT = "report"  # read and reported; the detectors alone decide
    VERIFIED_AI = "verified_ai"  # a trusted manifest declaring generation makes the label fake
    VERIFIED = "verified"  # also: a trusted manifest declaring a camera capture makes the label real

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class ProvenanceOptions:
    """What the analyzer does with provenance: the policy and the PEM text of the C2PA trust anchors
    (None: no anchor, so no manifest is ever trusted), and whether to look for watermarks."""

    policy: VerdictPolicy = VerdictPolicy.VERIFIED_AI
    trust_anchors_pem: str | None = None
    watermarks: bool = True


def _clip(text: str, limit: int) -> str:
    text = " ".join(text.split())  # one line: generators put prompts on many
    return text if len(text) <= limit else text[: limit - 1] + "…"


@dataclass(frozen=True)
class Finding:
    """One piece of evidence: ``kind``, ``value``, whether it is cryptographically ``verified`` (a claim of
    a trusted C2PA manifest), what it ``indicates`` on its own, and a human-readable ``detail``."""

    kind: FindingKind
    value: str
    verified: bool = False
    indicates: ProvenanceClass = ProvenanceClass.NONE
    detail: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "value", _clip(str(self.value), MAX_VALUE_CHARS))
        if self.detail is not None:
            object.__setattr__(self, "detail", _clip(self.detail, MAX_DETAIL_CHARS))

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind.value,
            "value": self.value,
            "verified": self.verified,
            "indicates": self.indicates.value,
            "detail": self.detail,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Finding:
        return cls(
            kind=FindingKind(data["kind"]),
            value=data["value"],
            verified=bool(data.get("verified", False)),
            indicates=ProvenanceClass(data.get("indicates", ProvenanceClass.NONE)),
            detail=data.get("detail"),
        )


def summarize(findings: Sequence[Finding]) -> tuple[ProvenanceClass, bool]:
    """(class, verified): verified findings first, then the rest; at each level ``ai`` before ``camera``
    (a captured photo with generated parts is generated), and ``none`` without either."""
    for verified in (True, False):
        for cls in (ProvenanceClass.AI, ProvenanceClass.CAMERA):
            if any(f.indicates == cls and (f.verified or not verified) for f in findings):
                return cls, verified
    return ProvenanceClass.NONE, False


@dataclass(frozen=True)
class Provenance:
    """All the findings about one file, its C2PA credential state, and their ``summary``; ``verified``
    when the summary rests on a trusted manifest's claim."""

    findings: tuple[Finding, ...] = ()
    credentials: CredentialState = CredentialState.ABSENT
    summary: ProvenanceClass = field(init=False)
    verified: bool = field(init=False)

    def __post_init__(self) -> None:
        summary, verified = summarize(self.findings)
        object.__setattr__(self, "summary", summary)
        object.__setattr__(self, "verified", verified)

    def with_findings(self, extra: Iterable[Finding]) -> Provenance:
        return replace(self, findings=(*self.findings, *extra))

    def to_dict(self) -> dict[str, Any]:
        return {
            "summary": self.summary.value,
            "verified": self.verified,
            "credentials": self.credentials.value,
            "findings": [f.to_dict() for f in self.findings],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Provenance:
        """Back from ``to_dict`` (a chord body's argument); the summary is derived again."""
        return cls(
            findings=tuple(Finding.from_dict(f) for f in data.get("findings", ())),
            credentials=CredentialState(data.get("credentials", CredentialState.ABSENT)),
        )


def decide(provenance: Provenance | None, policy: VerdictPolicy) -> str | None:
    """The label the policy lets provenance set (``fake`` or ``real``), or None: the detectors decide."""
    if provenance is None or not provenance.verified:
        return None
    if provenance.summary == ProvenanceClass.AI and policy in (
        VerdictPolicy.VERIFIED_AI,
        VerdictPolicy.VERIFIED,
    ):
        return "fake"
    if provenance.summary == ProvenanceClass.CAMERA and policy == VerdictPolicy.VERIFIED:
        return "real"
    return None


def source_type_term(value: Any) -> str | None:
    """The IPTC term of a digital source type, given as its URI (or, loosely, the bare term)."""
    if not value:
        return None
    return str(value).rstrip("/").rsplit("/", 1)[-1] or None


def indicates_of(term: str) -> ProvenanceClass:
    if term in AI_SOURCE_TYPES:
        return ProvenanceClass.AI
    if term in CAMERA_SOURCE_TYPES:
        return ProvenanceClass.CAMERA
    return ProvenanceClass.NONE


def software_finding(value: str, where: str) -> Finding:
    generated = GENERATOR_SOFTWARE.search(value) is not None
    return Finding(
        FindingKind.SOFTWARE,
        value,
        indicates=ProvenanceClass.AI if generated else ProvenanceClass.NONE,
        detail=where,
    )
