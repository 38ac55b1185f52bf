"""Media that say where they came from, made here for the provenance tests: no downloaded file.

- a test certificate chain (an ES256 root and a signing certificate with the extensions C2PA requires:
  the signer is no CA, has digitalSignature key usage, an e-mail-protection extended key usage, subject
  and authority key identifiers, and is issued by the root rather than self-signed);
- C2PA-signed JPEGs and MP4s: one declaring ``trainedAlgorithmicMedia``, one a ``digitalCapture``, and one
  of each changed after signing;
- PNGs with the text chunks of Stable Diffusion web UI and ComfyUI, a JPEG with an XMP DigitalSourceType, a
  JPEG with camera EXIF, and a PNG watermarked as the Stable Diffusion XL reference scripts do (with
  ``encode_watermark``, this file's rewrite of imwatermark's ``dwtDct`` encoder) beside the same PNG unmarked.

Every image is the astronaut portrait of ``workers.samples.face_image``, so the detectors see a face too.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from pipeline.provenance.watermark import KNOWN_MESSAGES, U_SCALE
from workers.samples import face_image, talking_face_video

IPTC = "http://cv.iptc.org/newscodes/digitalsourcetype/"
SDXL_BITS = KNOWN_MESSAGES[0].bits
CERT_VALIDITY = dt.timedelta(days=30)  # C2PA checks the signer's validity at read time (no timestamp here)
SD_PARAMETERS = (
    "portrait of an astronaut, studio light\n"
    "Negative prompt: blurry\n"
    "Steps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1234, Size: 512x512, Model hash: 6ce0161689, "
    "Model: v1-5-pruned-emaonly"
)
COMFY_PROMPT = {
    "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "sd_xl_base_1.0.safetensors"}},
    "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "portrait of an astronaut", "clip": ["4", 1]}},
    "3": {"class_type": "KSampler", "inputs": {"seed": 1, "steps": 20, "model": ["4", 0]}},
}
COMFY_WORKFLOW = {"last_node_id": 9, "nodes": [{"id": 4, "type": "CheckpointLoaderSimple"}], "version": 0.4}


@dataclass(frozen=True)
class TestChain:
    """PEM bytes of the root (the trust anchor), the signing certificate chain and its private key."""

    root_pem: bytes
    chain_pem: bytes  # signing certificate, then the root
    key_pem: bytes


def make_chain() -> TestChain:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = dt.datetime.now(dt.timezone.utc)

    def name(common_name: str) -> x509.Name:
        return x509.Name(
            [
                x509.NameAttribute(NameOID.COMMON_NAME, common_name),
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "deepscan tests"),
            ]
        )

    def usage(*, sign: bool, ca: bool) -> x509.KeyUsage:
        return x509.KeyUsage(
            digital_signature=sign,
            content_commitment=False,
            key_encipherment=False,
            data_encipherment=False,
            key_agreement=False,
            key_cert_sign=ca,
            crl_sign=ca,
            encipher_only=False,
            decipher_only=False,
        )

    root_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    root = (
        x509.CertificateBuilder()
        .subject_name(name("deepscan test root"))
        .issuer_name(name("deepscan test root"))
        .public_key(root_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + 2 * CERT_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(usage(sign=False, ca=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(root_key.public_key()), critical=False)
        .sign(root_key, hashes.SHA256())
    )
    signer = (
        x509.CertificateBuilder()
        .subject_name(name("deepscan test signer"))
        .issuer_name(root.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + CERT_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(usage(sign=True, ca=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(root_key.public_key()), critical=False
        )
        .sign(root_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    return TestChain(
        root_pem=root.public_bytes(pem),
        chain_pem=signer.public_bytes(pem) + root.public_bytes(pem),
        key_pem=key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
    )


def sign(data: bytes, mime: str, chain: TestChain, *, source_type: str, generator: str) -> bytes:
    """``data`` with an embedded C2PA manifest: one ``c2pa.created`` action of ``source_type``."""
    import c2pa

    manifest = {
        "claim_generator_info": [{"name": generator, "version": "1.0"}],
        "title": "fixture",
        "assertions": [
            {
                "label": "c2pa.actions",
                "data": {
                    "actions": [
                        {
                            "action": "c2pa.created",
                            "digitalSourceType": IPTC + source_type,
                            "softwareAgent": {"name": generator},
                        }
                    ]
                },
            }
        ],
    }
    info = c2pa.C2paSignerInfo(c2pa.C2paSigningAlg.ES256, chain.chain_pem, chain.key_pem, None)
    settings = {"builder": {"thumbnail": {"enabled": False}}, "verify": {"remote_manifest_fetch": False}}
    with (
        c2pa.Context.from_dict(settings) as context,
        c2pa.Signer.from_info(info) as signer,
        c2pa.Builder(json.dumps(manifest), context) as builder,
    ):
        out = io.BytesIO()
        builder.sign(signer, mime, io.BytesIO(data), out)
    return out.getvalue()


def tamper_jpeg(data: bytes) -> bytes:
    """Change entropy-coded bytes near the end of a JPEG (the bottom rows; the face stays decodable)."""
    changed = bytearray(data)
    at = len(changed) - len(changed) // 10
    for i in range(at, at + 64, 8):
        changed[i] = changed[i] ^ 0x01 if changed[i] not in (0xFF, 0xFE) else changed[i]
    return bytes(changed)


def tamper_mp4(data: bytes) -> bytes:
    """Change bytes in the middle of an MP4's ``mdat`` box (compressed video, not the container)."""
    start = data.index(b"mdat") + 4
    size = struct.unpack(">I", data[start - 8 : start - 4])[0]
    changed = bytearray(data)
    middle = start + size // 2
    changed[middle : middle + 16] = bytes(b ^ 0x01 for b in changed[middle : middle + 16])
    return bytes(changed)


def encode_watermark(rgb: np.ndarray, bits: tuple[int, ...], scale: float = U_SCALE) -> np.ndarray:
    """imwatermark's ``WatermarkEncoder.encode(bgr, "dwtDct")`` (its EmbedMaxDct) on an RGB uint8 image,
    step by step: U plane, Haar band, per 4x4 block the largest coefficient after the first moved to a
    quarter (bit 0) or three quarters (bit 1) of its ``scale`` cell, and back. Like the library it puts the
    detail bands back as (V, H, D) and stores floats into the uint8 plane, truncating."""
    import pywt

    bgr = np.ascontiguousarray(rgb[:, :, ::-1])
    rows, cols = bgr.shape[0] // 4 * 4, bgr.shape[1] // 4 * 4
    yuv = cv2.cvtColor(bgr, cv2.COLOR_BGR2YUV)
    band, (h, v, d) = pywt.dwt2(yuv[:rows, :cols, 1], "haar")
    num = 0
    for i in range(band.shape[0] // 4):
        for j in range(band.shape[1] // 4):
            block = band[i * 4 : i * 4 + 4, j * 4 : j * 4 + 4]
            flat = block.flatten()
            pos = int(np.argmax(np.abs(flat[1:]))) + 1
            value = flat[pos]
            bit = bits[num % len(bits)]
            moved = (abs(value) // scale + 0.25 + 0.5 * bit) * scale
            block[pos // 4, pos % 4] = moved if value >= 0.0 else -moved
            num += 1
    yuv[:rows, :cols, 1] = pywt.idwt2((band, (v, h, d)), "haar")
    return np.ascontiguousarray(cv2.cvtColor(yuv, cv2.COLOR_YUV2BGR)[:, :, ::-1])


def png_bytes(rgb: np.ndarray, text: dict[str, str] | None = None) -> bytes:
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    for key, value in (text or {}).items():
        info.add_text(key, value)
    out = io.BytesIO()
    Image.fromarray(rgb).save(out, "PNG", pnginfo=info)
    return out.getvalue()


def jpeg_bytes(rgb: np.ndarray, *, exif: dict[int, str] | None = None) -> bytes:
    from PIL import Image

    image = Image.fromarray(rgb)
    out = io.BytesIO()
    if exif:
        tags = Image.Exif()
        for tag, value in exif.items():
            tags[tag] = value
        image.save(out, "JPEG", quality=92, exif=tags.tobytes())
    else:
        image.save(out, "JPEG", quality=92)
    return out.getvalue()


def with_xmp(jpeg: bytes, xmp: str) -> bytes:
    """A JPEG with an XMP packet in an APP1 segment right after SOI."""
    payload = b"http://ns.adobe.com/xap/1.0/\x00" + xmp.encode()
    return jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload + jpeg[2:]


def xmp_packet(source_type: str, creator_tool: str = "") -> str:
    tool = f' xmp:CreatorTool="{creator_tool}"' if creator_tool else ""
    return (
        '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>'
        '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
        '<rdf:Description rdf:about="" xmlns:Iptc4xmpExt="http://iptc.org/std/Iptc4xmpExt/2008-02-29/"'
        f' xmlns:xmp="http://ns.adobe.com/xap/1.0/"{tool}>'
        f"<Iptc4xmpExt:DigitalSourceType>{IPTC}{source_type}</Iptc4xmpExt:DigitalSourceType>"
        '</rdf:Description></rdf:RDF></x:xmpmeta><?xpacket end="w"?>'
    )


# -- the set ------------------------------------------------------------------------------------------------

# What each fixture gives: (label decided by provenance?, summary, verified, credentials), with the test root
# as the trust anchor. detect, the API and the distributed scan are held to the same table.
EXPECTED_PROVENANCE = {
    "c2pa_ai.jpg": (True, "ai", True, "trusted"),
    "c2pa_camera.jpg": (False, "camera", True, "trusted"),
    "c2pa_tampered.jpg": (False, "none", False, "invalid"),
    "c2pa_ai.mp4": (True, "ai", True, "trusted"),
    "c2pa_camera.mp4": (False, "camera", True, "trusted"),
    "c2pa_tampered.mp4": (False, "ai", False, "invalid"),
    "sd_webui.png": (False, "ai", False, "absent"),
    "comfyui.png": (False, "ai", False, "absent"),
    "xmp_ai.jpg": (False, "ai", False, "absent"),
    "exif_camera.jpg": (False, "camera", False, "absent"),
    "watermarked.png": (False, "ai", False, "absent"),
    "unmarked.png": (False, "none", False, "absent"),
    "plain.jpg": (False, "none", False, "absent"),
}


def assert_provenance(name: str, result: Mapping[str, Any]) -> None:
    """A result of fixture ``name`` (fresh, or a stored row in the same JSON shape) as the table says."""
    decided, summary, verified, credentials = EXPECTED_PROVENANCE[name]
    provenance, details = result["provenance"], result["details"]
    assert result["status"] == "ok", (name, result["reason"])
    found = (provenance["summary"], provenance["verified"], provenance["credentials"])
    assert found == (summary, verified, credentials), name
    if decided:
        assert (result["label"], result["fake_probability"]) == ("fake", 1.0), name
        assert details["verdict_driven_by"] == "provenance", name
        assert 0.0 <= details["detector_fake_probability"] <= 1.0, name
    else:
        assert details.get("verdict_driven_by") != "provenance", name
        assert "detector_fake_probability" not in details, name


VIDEO_DURATION_S = 2


def write_provenance_media(directory: Path) -> dict[str, Path]:
    """Every fixture, by name, plus ``anchors.pem`` (the test root, for DEEPSCAN_C2PA_TRUST_ANCHORS)."""
    directory.mkdir(parents=True, exist_ok=True)
    chain = make_chain()
    face = face_image()
    plain_jpeg = jpeg_bytes(face)
    video = talking_face_video(directory / "plain.mp4", face, None, duration_s=VIDEO_DURATION_S)
    plain_mp4 = video.read_bytes()
    video.unlink()

    def ai(data: bytes, mime: str) -> bytes:
        return sign(data, mime, chain, source_type="trainedAlgorithmicMedia", generator="Test Diffusion")

    def camera(data: bytes, mime: str) -> bytes:
        return sign(data, mime, chain, source_type="digitalCapture", generator="Test Camera")

    files = {
        "anchors.pem": chain.root_pem,
        "c2pa_ai.jpg": ai(plain_jpeg, "image/jpeg"),
        "c2pa_camera.jpg": camera(plain_jpeg, "image/jpeg"),
        "c2pa_tampered.jpg": tamper_jpeg(camera(plain_jpeg, "image/jpeg")),
        "c2pa_ai.mp4": ai(plain_mp4, "video/mp4"),
        "c2pa_camera.mp4": camera(plain_mp4, "video/mp4"),
        "c2pa_tampered.mp4": tamper_mp4(ai(plain_mp4, "video/mp4")),
        "sd_webui.png": png_bytes(face, {"parameters": SD_PARAMETERS}),
        "comfyui.png": png_bytes(
            face, {"prompt": json.dumps(COMFY_PROMPT), "workflow": json.dumps(COMFY_WORKFLOW)}
        ),
        "xmp_ai.jpg": with_xmp(plain_jpeg, xmp_packet("trainedAlgorithmicMedia", "Test Diffusion 2")),
        "exif_camera.jpg": jpeg_bytes(face, exif={0x010F: "Canon", 0x0110: "Canon EOS R5", 0x0131: "1.8.1"}),
        "watermarked.png": png_bytes(encode_watermark(face, SDXL_BITS)),
        "unmarked.png": png_bytes(face),
        "plain.jpg": plain_jpeg,
    }
    for name, data in files.items():
        (directory / name).write_bytes(data)
    return {name: directory / name for name in files}
