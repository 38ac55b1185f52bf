"""Unverified provenance in an image's own metadata: XMP, EXIF, IPTC-IIM and PNG text chunks.

- XMP: the IPTC ``DigitalSourceType``, ``xmp:CreatorTool``, ``dcterms:provenance`` (a C2PA manifest the file
  refers to);
- EXIF ``Software``, ``Make``, ``Model``, and Stable Diffusion web UI parameters in a JPEG's UserComment;
  the IPTC-IIM originating program;
- PNG text chunks in the formats of known generators: Stable Diffusion web UI ``parameters``, ComfyUI
  ``prompt``/``workflow``, InvokeAI, NovelAI, Fooocus, the GB 45438 ``AIGC`` label.

Anyone can write any of it: every finding here is evidence, never verified.
"""

from __future__ import annotations

import io
import json
import logging
import struct
import zlib
from collections.abc import Iterator, Mapping
from typing import Any
from xml.etree import ElementTree

from pipeline.provenance.evidence import (
    Finding,
    FindingKind,
    ProvenanceClass,
    indicates_of,
    software_finding,
    source_type_term,
)

logger = logging.getLogger(__name__)

MAX_TEXT_CHUNK_BYTES = 1 << 20  # inflate at most 1 MiB of a compressed PNG text chunk
MAX_XMP_BYTES = 1 << 20
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_XMP_START, _XMP_END = b"<x:xmpmeta", b"</x:xmpmeta>"

NS = {
    "iptc_ext": "http://iptc.org/std/Iptc4xmpExt/2008-02-29/",
    "xmp": "http://ns.adobe.com/xap/1.0/",
    "dcterms": "http://purl.org/dc/terms/",
    "rdf": "http://www.w3.org/1999/02/22-rdf-syntax-ns#",
}
EXIF_SOFTWARE, EXIF_MAKE, EXIF_MODEL = 0x0131, 0x010F, 0x0110
EXIF_IFD, EXIF_USER_COMMENT = 0x8769, 0x9286
IPTC_ORIGINATING_PROGRAM = (2, 65)


def image_metadata(data: bytes) -> Iterator[Finding]:
    """Unverified findings from an image's XMP, EXIF, IPTC-IIM and (PNG) text chunks."""
    texts: dict[str, str] = {}
    exif_raw: bytes | None = None
    if data.startswith(_PNG_SIGNATURE):
        texts, exif_raw = png_text_chunks(data)
    xmp = texts.get("XML:com.adobe.xmp") or _xmp_packet(data)
    if xmp:
        yield from xmp_findings(xmp)
    yield from generator_findings(texts)
    yield from exif_findings(data, exif_raw)


def png_text_chunks(data: bytes) -> tuple[dict[str, str], bytes | None]:
    """The tEXt, zTXt and iTXt chunks of a PNG (key -> text) and its eXIf chunk, read without decoding
    pixels (Pillow would decode the image to find text chunks after the image data)."""
    texts: dict[str, str] = {}
    exif: bytes | None = None
    pos = len(_PNG_SIGNATURE)
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        body = data[pos + 8 : pos + 8 + length]
        pos += 12 + length  # length, type, data, CRC
        try:
            if kind == b"tEXt":
                key, _, text = body.partition(b"\x00")
                texts[key.decode("latin-1")] = text.decode("latin-1")
            elif kind == b"zTXt":
                key, _, rest = body.partition(b"\x00")
                texts[key.decode("latin-1")] = _inflate(rest[1:]).decode("latin-1")
            elif kind == b"iTXt":
                key, _, rest = body.partition(b"\x00")
                compressed, rest = rest[0], rest[2:]
                _language, _, rest = rest.partition(b"\x00")
                _translated, _, text = rest.partition(b"\x00")
                texts[key.decode("latin-1")] = (_inflate(text) if compressed else text).decode(
                    "utf-8", "replace"
                )
            elif kind == b"eXIf":
                exif = body
            elif kind == b"IEND":
                break
        except (IndexError, zlib.error, UnicodeDecodeError):
            continue  # one broken chunk hides nothing else
    return texts, exif


def _inflate(compressed: bytes) -> bytes:
    return zlib.decompressobj().decompress(compressed, MAX_TEXT_CHUNK_BYTES)


def _xmp_packet(data: bytes) -> str | None:
    start = data.find(_XMP_START)
    if start < 0:
        return None
    end = data.find(_XMP_END, start, start + MAX_XMP_BYTES)
    if end < 0:
        return None
    return data[start : end + len(_XMP_END)].decode("utf-8", "replace")


def _xmp_values(root: ElementTree.Element, namespace: str, name: str) -> list[str]:
    """Every value of property ``name`` in ``namespace``: as attributes, element text, ``rdf:resource``
    or the items of an ``rdf:Alt``/``Seq``/``Bag``."""
    tag = f"{{{namespace}}}{name}"
    values = []
    for element in root.iter():
        if tag in element.attrib:
            values.append(element.attrib[tag])
        if element.tag == tag:
            resource = element.attrib.get(f"{{{NS['rdf']}}}resource")
            items = [li.text for li in element.iter(f"{{{NS['rdf']}}}li") if li.text]
            values.extend([resource] if resource else items or ([element.text] if element.text else []))
    return [v.strip() for v in values if v and v.strip()]


def xmp_findings(packet: str) -> Iterator[Finding]:
    if "<!DOCTYPE" in packet or "<!ENTITY" in packet:  # XMP has neither; refuse entity expansion games
        return
    try:
        root = ElementTree.fromstring(packet)
    except ElementTree.ParseError as e:
        logger.debug("unparseable XMP packet: %s", e)
        return
    for value in _xmp_values(root, NS["iptc_ext"], "DigitalSourceType"):
        term = source_type_term(value) or value
        yield Finding(FindingKind.XMP_SOURCE_TYPE, term, indicates=indicates_of(term), detail="XMP (IPTC)")
    for value in _xmp_values(root, NS["xmp"], "CreatorTool"):
        yield software_finding(value, "XMP CreatorTool")
    for value in _xmp_values(root, NS["dcterms"], "provenance"):
        yield Finding(FindingKind.XMP_PROVENANCE, value, detail="XMP dcterms:provenance")


def generator_findings(texts: Mapping[str, str]) -> Iterator[Finding]:
    """Findings for the PNG text chunks that generators write, by the keys and shapes they use."""

    def found(name: str, key: str, excerpt: str) -> Finding:
        return Finding(
            FindingKind.GENERATOR, name, indicates=ProvenanceClass.AI, detail=f"PNG text {key!r}: {excerpt}"
        )

    parameters = texts.get("parameters")
    if parameters is not None:
        if "fooocus_scheme" in texts or parameters.lstrip().startswith("{"):
            yield found("Fooocus", "parameters", parameters)
        elif "Steps:" in parameters:
            settings = parameters[parameters.rfind("Steps:") :]
            yield found("Stable Diffusion web UI (AUTOMATIC1111 format)", "parameters", settings)
    prompt, workflow = _json(texts.get("prompt")), _json(texts.get("workflow"))
    graph = prompt if isinstance(prompt, Mapping) else {}
    if any(isinstance(node, Mapping) and "class_type" in node for node in graph.values()) or (
        isinstance(workflow, Mapping) and "nodes" in workflow
    ):
        models = sorted(
            {
                str(value)
                for node in graph.values()
                if isinstance(node, Mapping)
                for key, value in (node.get("inputs") or {}).items()
                if key in ("ckpt_name", "unet_name") and isinstance(value, str)
            }
        )
        yield found("ComfyUI", "prompt" if graph else "workflow", "models " + ", ".join(models or ["?"]))
    for key in ("invokeai_metadata", "invokeai_graph", "sd-metadata", "Dream"):
        if key in texts:
            yield found("InvokeAI", key, texts[key])
            break
    software = texts.get("Software")
    if software is not None:
        if software.strip() == "NovelAI":
            yield found("NovelAI", "Software", texts.get("Source", software))
        else:
            yield software_finding(software, "PNG text 'Software'")
    if "AIGC" in texts:  # China's GB 45438-2025 implicit label for generated content
        yield found("AIGC label (GB 45438-2025)", "AIGC", texts["AIGC"])


def _json(text: str | None) -> Any:
    if not text:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return None


def exif_findings(data: bytes, exif_raw: bytes | None = None) -> Iterator[Finding]:
    """EXIF Software, Make, Model (and Stable Diffusion web UI parameters in a JPEG's UserComment), and
    the IPTC-IIM originating program. PNGs pass their eXIf chunk: Pillow would decode a PNG to find it."""
    from PIL import Image, IptcImagePlugin, UnidentifiedImageError

    iptc: dict[tuple[int, int], Any] | None = None
    try:
        if data.startswith(_PNG_SIGNATURE):
            exif = Image.Exif()
            if exif_raw:
                exif.load(exif_raw)
        else:
            with Image.open(io.BytesIO(data)) as image:  # parses the headers only, decodes no pixel
                exif = image.getexif()
                iptc = IptcImagePlugin.getiptcinfo(image) if image.format == "JPEG" else None
        comment = exif.get_ifd(EXIF_IFD).get(EXIF_USER_COMMENT)
        tags = {tag: _exif_text(exif.get(tag)) for tag in (EXIF_SOFTWARE, EXIF_MAKE, EXIF_MODEL)}
    except (
        UnidentifiedImageError,
        Image.DecompressionBombError,
        OSError,
        SyntaxError,
        ValueError,
        struct.error,
    ) as e:
        logger.debug("no EXIF read: %s", e)
        return
    if tags[EXIF_SOFTWARE]:
        yield software_finding(tags[EXIF_SOFTWARE], "EXIF Software")
    if tags[EXIF_MAKE]:
        yield Finding(
            FindingKind.CAMERA_MAKE, tags[EXIF_MAKE], indicates=ProvenanceClass.CAMERA, detail="EXIF"
        )
    if tags[EXIF_MODEL]:
        yield Finding(
            FindingKind.CAMERA_MODEL, tags[EXIF_MODEL], indicates=ProvenanceClass.CAMERA, detail="EXIF"
        )
    text = _user_comment(comment)
    if text and "Steps:" in text and "Sampler:" in text:
        yield Finding(
            FindingKind.GENERATOR,
            "Stable Diffusion web UI (AUTOMATIC1111 format)",
            indicates=ProvenanceClass.AI,
            detail="EXIF UserComment: " + text[text.rfind("Steps:") :],
        )
    raw = (iptc or {}).get(IPTC_ORIGINATING_PROGRAM)
    program = _exif_text(raw[0] if isinstance(raw, list) and raw else raw)
    if program:
        yield software_finding(program, "IPTC originating program")


def _exif_text(value: Any) -> str:
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    return str(value).strip("\x00 ").strip() if value else ""


def _user_comment(value: Any) -> str:
    """EXIF UserComment: 8 bytes naming the character code, then the text (web UI writes UTF-16)."""
    if isinstance(value, str):
        return value
    if not isinstance(value, bytes) or len(value) < 8:
        return ""
    code, body = value[:8], value[8:]
    if code.startswith(b"UNICODE"):
        encoding = "utf-16-le" if body[:1] != b"\x00" and body[1:2] == b"\x00" else "utf-16-be"
        return body.decode(encoding, "replace").strip("\x00")
    return body.decode("utf-8", "replace").strip("\x00")
