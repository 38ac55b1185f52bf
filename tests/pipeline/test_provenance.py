"""Provenance: the findings of every fixture, what they sum up to, and what the policy lets them do to a
verdict in ``Analyzer.analyze_file``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.analyze import Analyzer
from pipeline.media import decode_image_bytes
from pipeline.pack import ModelPack
from pipeline.provenance import (
    CredentialState,
    Finding,
    FindingKind,
    Provenance,
    ProvenanceClass,
    ProvenanceOptions,
    VerdictPolicy,
    decide,
    read_provenance,
    watermark_findings,
)
from pipeline.provenance.metadata import png_text_chunks
from tests.provenance_media import jpeg_bytes, png_bytes, with_xmp
from workers.samples import face_image

AI, CAMERA, NONE = ProvenanceClass.AI, ProvenanceClass.CAMERA, ProvenanceClass.NONE

# fixture -> (summary, verified, credentials) with the test root as the trust anchor
EXPECTED = {
    "c2pa_ai.jpg": (AI, True, "trusted"),
    "c2pa_camera.jpg": (CAMERA, True, "trusted"),
    "c2pa_tampered.jpg": (NONE, False, "invalid"),  # a camera claim that no longer matches its file
    "c2pa_ai.mp4": (AI, True, "trusted"),
    "c2pa_camera.mp4": (CAMERA, True, "trusted"),
    "c2pa_tampered.mp4": (AI, False, "invalid"),  # a claim of generation still points to generation
    "sd_webui.png": (AI, False, "absent"),
    "comfyui.png": (AI, False, "absent"),
    "xmp_ai.jpg": (AI, False, "absent"),
    "exif_camera.jpg": (CAMERA, False, "absent"),
    "watermarked.png": (AI, False, "absent"),
    "unmarked.png": (NONE, False, "absent"),
    "plain.jpg": (NONE, False, "absent"),
}


def provenance_of(path: Path, anchors: str | None) -> Provenance:
    """What the analyzer reads: bytes and pixels for an image, the path for a video."""
    if path.suffix == ".mp4":
        return read_provenance(path, media_type="video", trust_anchors_pem=anchors)
    data = path.read_bytes()
    found = read_provenance(data, media_type="image", trust_anchors_pem=anchors)
    return found.with_findings(watermark_findings(decode_image_bytes(data)))


def kinds(provenance: Provenance) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for f in provenance.findings:
        out.setdefault(f.kind.value, []).append(f.value)
    return out


@pytest.fixture(scope="module")
def anchors(provenance_media: dict[str, Path]) -> str:
    return provenance_media["anchors.pem"].read_text()


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_fixture_sums_up_as_expected(
    name: str, provenance_media: dict[str, Path], anchors: str
) -> None:
    found = provenance_of(provenance_media[name], anchors)
    summary, verified, credentials = EXPECTED[name]
    assert (found.summary, found.verified, found.credentials.value) == (summary, verified, credentials), found
    assert Provenance.from_dict(json.loads(json.dumps(found.to_dict()))) == found


def test_signed_files_show_their_claims_and_their_signer(
    provenance_media: dict[str, Path], anchors: str
) -> None:
    for name, term, generator in (
        ("c2pa_ai.jpg", "trainedAlgorithmicMedia", "Test Diffusion 1.0"),
        ("c2pa_camera.mp4", "digitalCapture", "Test Camera 1.0"),
    ):
        found = provenance_of(provenance_media[name], anchors)
        assert kinds(found) == {
            "c2pa.manifest": ["trusted"],
            "c2pa.claim_generator": [generator],
            "c2pa.action": ["c2pa.created"],
            "c2pa.digital_source_type": [term],
        }
        assert all(f.verified for f in found.findings)
        manifest = found.findings[0]
        assert manifest.detail is not None and "deepscan test signer" in manifest.detail


def test_tampered_files_say_why_their_credentials_are_invalid(
    provenance_media: dict[str, Path], anchors: str
) -> None:
    jpeg = provenance_of(provenance_media["c2pa_tampered.jpg"], anchors)
    mp4 = provenance_of(provenance_media["c2pa_tampered.mp4"], anchors)
    for found, code in ((jpeg, "assertion.dataHash.mismatch"), (mp4, "assertion.bmffHash.mismatch")):
        manifest = found.findings[0]
        assert manifest.value == "invalid" and not manifest.verified
        assert manifest.detail is not None and code in manifest.detail
        assert not any(f.verified for f in found.findings)


def test_without_trust_anchors_a_valid_signature_is_untrusted_and_unverified(
    provenance_media: dict[str, Path],
) -> None:
    found = provenance_of(provenance_media["c2pa_ai.jpg"], None)
    assert (found.credentials, found.summary, found.verified) == (CredentialState.UNTRUSTED, AI, False)
    assert "signingCredential.untrusted" in (found.findings[0].detail or "")
    other_root = provenance_of(provenance_media["c2pa_ai.jpg"], provenance_media["anchors.pem"].read_text())
    assert other_root.verified  # the same file under its own root


def test_metadata_findings(provenance_media: dict[str, Path], anchors: str) -> None:
    sd = provenance_of(provenance_media["sd_webui.png"], anchors).findings
    assert [(f.kind, f.value) for f in sd] == [
        (FindingKind.GENERATOR, "Stable Diffusion web UI (AUTOMATIC1111 format)")
    ]
    assert sd[0].detail is not None and "Steps: 20, Sampler: Euler a" in sd[0].detail
    (comfy,) = provenance_of(provenance_media["comfyui.png"], anchors).findings
    assert comfy.value == "ComfyUI" and "sd_xl_base_1.0.safetensors" in (comfy.detail or "")
    assert kinds(provenance_of(provenance_media["xmp_ai.jpg"], anchors)) == {
        "xmp.digital_source_type": ["trainedAlgorithmicMedia"],
        "software": ["Test Diffusion 2"],
    }
    assert kinds(provenance_of(provenance_media["exif_camera.jpg"], anchors)) == {
        "software": ["1.8.1"],
        "exif.make": ["Canon"],
        "exif.model": ["Canon EOS R5"],
    }
    (mark,) = provenance_of(provenance_media["watermarked.png"], anchors).findings
    assert (mark.kind, mark.value, mark.detail) == (
        FindingKind.WATERMARK,
        "Stable Diffusion XL",
        "imwatermark dwtDct, 48 of 48 bits match (BGR order)",
    )


def test_generator_names_in_software_fields_point_to_generation() -> None:
    face = face_image()
    tagged = jpeg_bytes(face, exif={0x0131: "NovelAI Diffusion V3"})
    (software,) = read_provenance(tagged, media_type="image").findings
    assert (software.value, software.indicates) == ("NovelAI Diffusion V3", AI)
    compressed = png_bytes(face, {"Software": "Adobe Photoshop 25.0"})
    (photoshop,) = read_provenance(compressed, media_type="image").findings
    assert photoshop.indicates == NONE


def test_a_manifest_the_file_refers_to_but_does_not_carry() -> None:
    xmp = (
        '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
        '<rdf:Description xmlns:dcterms="http://purl.org/dc/terms/" dcterms:provenance="{}"/>'
        "</rdf:RDF></x:xmpmeta>"
    )
    plain = jpeg_bytes(face_image())
    stripped = read_provenance(
        with_xmp(plain, xmp.format("self#jumbf=/c2pa/urn:uuid:1/c2pa.signature")), media_type="image"
    )
    assert stripped.credentials == CredentialState.STRIPPED and stripped.summary == NONE
    remote = read_provenance(
        with_xmp(plain, xmp.format("https://example.invalid/m.c2pa")), media_type="image"
    )
    assert remote.credentials == CredentialState.REMOTE  # and nothing was fetched


def test_garbage_is_no_evidence() -> None:
    for data in (b"", b"\xff\xd8\xff\xe0" + bytes(range(256)) * 8, b"\x89PNG\r\n\x1a\n\x00\x00\xff\xffzTXt"):
        found = read_provenance(data, media_type="image")
        assert (found.findings, found.credentials) == ((), CredentialState.ABSENT)
    hostile = '<!DOCTYPE x [<!ENTITY a "aaaa">]><x:xmpmeta xmlns:x="adobe:ns:meta/">&a;</x:xmpmeta>'
    assert read_provenance(with_xmp(jpeg_bytes(face_image()), hostile), media_type="image").findings == ()
    assert png_text_chunks(b"\x89PNG\r\n\x1a\n") == ({}, None)


def test_findings_are_labels_not_copies() -> None:
    long = Finding(FindingKind.SOFTWARE, "x" * 1000, detail="line one\nline two " + "y" * 1000)
    assert len(long.value) == 200 and long.value.endswith("…")
    assert long.detail is not None and len(long.detail) == 300 and "\n" not in long.detail


def test_the_summary_prefers_verified_then_generated() -> None:
    def finding(indicates: ProvenanceClass, verified: bool) -> Finding:
        return Finding(FindingKind.C2PA_SOURCE_TYPE, "t", verified, indicates)

    def summary(*findings: Finding) -> tuple[ProvenanceClass, bool]:
        provenance = Provenance(findings=findings)
        return provenance.summary, provenance.verified

    assert summary() == (NONE, False)
    assert summary(finding(CAMERA, True), finding(AI, False)) == (CAMERA, True)
    assert summary(finding(CAMERA, False), finding(AI, False)) == (AI, False)
    assert summary(finding(CAMERA, True), finding(AI, True)) == (AI, True)


def test_the_policy_decides_only_on_verified_claims() -> None:
    verified_ai = Provenance(findings=(Finding(FindingKind.C2PA_SOURCE_TYPE, "t", True, AI),))
    verified_camera = Provenance(findings=(Finding(FindingKind.C2PA_SOURCE_TYPE, "t", True, CAMERA),))
    unverified_ai = Provenance(findings=(Finding(FindingKind.WATERMARK, "t", False, AI),))
    table = {
        policy: [decide(p, policy) for p in (verified_ai, verified_camera, unverified_ai, None)]
        for policy in VerdictPolicy
    }
    assert table == {
        VerdictPolicy.OFF: [None, None, None, None],
        VerdictPolicy.REPORT: [None, None, None, None],
        VerdictPolicy.VERIFIED_AI: ["fake", None, None, None],
        VerdictPolicy.VERIFIED: ["fake", "real", None, None],
    }


# -- through the analyzer ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pack(random_pack: Path) -> ModelPack:
    return ModelPack.load(random_pack)


@pytest.fixture(scope="module")
def analyzer(pack: ModelPack, anchors: str) -> Analyzer:
    return Analyzer(pack, provenance=ProvenanceOptions(trust_anchors_pem=anchors))


def test_a_verified_claim_of_generation_makes_the_label_fake(
    analyzer: Analyzer, provenance_media: dict[str, Path]
) -> None:
    for name in ("c2pa_ai.jpg", "c2pa_ai.mp4"):
        row = analyzer.analyze_file(provenance_media[name]).to_dict()
        assert (row["status"], row["label"], row["fake_probability"]) == ("ok", "fake", 1.0), name
        assert row["confidence"] == {"real": 0.0, "fake": 1.0}
        details = row["details"]
        assert details["verdict_driven_by"] == "provenance"
        assert details["detector_label"] in ("fake", "real")
        assert 0.0 <= details["detector_fake_probability"] <= 1.0
        assert row["provenance"]["summary"] == "ai" and row["provenance"]["verified"] is True
    video = analyzer.analyze_file(provenance_media["c2pa_ai.mp4"]).to_dict()
    assert video["details"]["detector_verdict_driven_by"] == "faces" and len(video["timeline"]) == 2


def test_everything_else_leaves_the_verdict_to_the_detectors(
    analyzer: Analyzer, pack: ModelPack, provenance_media: dict[str, Path]
) -> None:
    reference = Analyzer(pack, provenance=ProvenanceOptions(policy=VerdictPolicy.OFF))
    for name in sorted(EXPECTED):
        if name in ("c2pa_ai.jpg", "c2pa_ai.mp4"):
            continue
        row = analyzer.analyze_file(provenance_media[name]).to_dict()
        plain = reference.analyze_file(provenance_media[name]).to_dict()
        assert row["status"] == "ok", (name, row["reason"])
        assert row["provenance"]["summary"] == EXPECTED[name][0].value, name
        assert plain["provenance"] is None
        for key in ("label", "fake_probability", "confidence", "faces", "details"):
            assert row[key] == plain[key], (name, key)


def test_a_file_without_provenance_gives_the_same_result_as_before(
    analyzer: Analyzer, pack: ModelPack, samples: Path
) -> None:
    off = Analyzer(pack, provenance=ProvenanceOptions(policy=VerdictPolicy.OFF))
    for name in ("face.jpg", "talking_face.mp4", "speech.wav", "no_face.png", "corrupt.jpg", "notes.txt"):
        row, before = (
            analyzer.analyze_file(samples / name).to_dict(),
            off.analyze_file(samples / name).to_dict(),
        )
        expected = None if name == "notes.txt" else Provenance().to_dict()
        assert row.pop("provenance") == expected, name
        assert before.pop("provenance") is None
        row.pop("elapsed_s"), before.pop("elapsed_s")
        assert row == before, name
    assert Provenance().to_dict() == {
        "summary": "none",
        "verified": False,
        "credentials": "absent",
        "findings": [],
    }


def test_a_verified_claim_labels_a_file_the_detectors_could_not_judge(
    pack: ModelPack, provenance_media: dict[str, Path], tmp_path: Path
) -> None:
    from skimage import data

    from tests.provenance_media import make_chain, sign

    chain = make_chain()
    landscape = sign(
        jpeg_bytes(data.coffee()),
        "image/jpeg",
        chain,
        source_type="trainedAlgorithmicMedia",
        generator="Test Diffusion",
    )
    (tmp_path / "coffee.jpg").write_bytes(landscape)
    options = ProvenanceOptions(trust_anchors_pem=chain.root_pem.decode())
    row = Analyzer(pack, provenance=options).analyze_file(tmp_path / "coffee.jpg").to_dict()
    assert (row["status"], row["reason"], row["label"]) == ("ok", None, "fake")
    assert row["details"]["detector_status"] == "no_face" and row["details"]["detector_label"] is None
    report = Analyzer(
        pack,
        provenance=ProvenanceOptions(
            policy=VerdictPolicy.REPORT, trust_anchors_pem=options.trust_anchors_pem
        ),
    )
    row = report.analyze_file(tmp_path / "coffee.jpg").to_dict()
    assert row["status"] == "no_face" and row["provenance"]["verified"] is True


def test_the_verified_policy_also_labels_a_verified_capture_real(
    pack: ModelPack, provenance_media: dict[str, Path], anchors: str
) -> None:
    analyzer = Analyzer(
        pack, provenance=ProvenanceOptions(policy=VerdictPolicy.VERIFIED, trust_anchors_pem=anchors)
    )
    row = analyzer.analyze_file(provenance_media["c2pa_camera.jpg"]).to_dict()
    assert (row["label"], row["fake_probability"], row["details"]["verdict_driven_by"]) == (
        "real",
        0.0,
        "provenance",
    )
    tampered = analyzer.analyze_file(provenance_media["c2pa_tampered.jpg"]).to_dict()
    assert "verdict_driven_by" not in tampered["details"]


@pytest.mark.parametrize("fmt", ["png", "webp", "wav", "mp3"])
def test_credentials_in_the_other_formats(fmt: str, samples: Path, tmp_path: Path) -> None:
    import subprocess

    import cv2

    from tests.provenance_media import make_chain, sign

    chain = make_chain()
    if fmt in ("png", "webp"):
        ok, encoded = cv2.imencode(f".{fmt}", cv2.cvtColor(face_image(), cv2.COLOR_RGB2BGR))
        assert ok
        data, mime = encoded.tobytes(), f"image/{fmt}"
    else:
        source = samples / "speech.wav"
        if fmt == "mp3":
            source = tmp_path / "speech.mp3"
            cmd = ["ffmpeg", "-nostdin", "-loglevel", "error", "-i", str(samples / "speech.wav"), str(source)]
            subprocess.run(cmd, check=True)
        data, mime = source.read_bytes(), {"wav": "audio/wav", "mp3": "audio/mpeg"}[fmt]
    signed = sign(data, mime, chain, source_type="trainedAlgorithmicMedia", generator="Test Voice")
    path = tmp_path / f"signed.{fmt}"
    path.write_bytes(signed)
    anchors = chain.root_pem.decode()
    if fmt in ("png", "webp"):
        found = read_provenance(signed, media_type="image", trust_anchors_pem=anchors)
    else:
        found = read_provenance(path, media_type="audio", trust_anchors_pem=anchors)
    assert (found.summary, found.verified, found.credentials) == (AI, True, CredentialState.TRUSTED)


def test_a_signed_generated_voice_is_fake_by_provenance(
    pack: ModelPack, samples: Path, tmp_path: Path
) -> None:
    from tests.provenance_media import make_chain, sign

    chain = make_chain()
    speech = sign(
        (samples / "speech.wav").read_bytes(),
        "audio/wav",
        chain,
        source_type="trainedAlgorithmicMedia",
        generator="Test Voice",
    )
    (tmp_path / "voice.wav").write_bytes(speech)
    analyzer = Analyzer(pack, provenance=ProvenanceOptions(trust_anchors_pem=chain.root_pem.decode()))
    row = analyzer.analyze_file(tmp_path / "voice.wav").to_dict()
    assert (row["media_type"], row["status"], row["label"]) == ("audio", "ok", "fake")
    assert row["details"]["verdict_driven_by"] == "provenance" and row["audio"]["windows"] >= 1
    assert row["details"]["detector_fake_probability"] == row["audio"]["fake_probability"]
