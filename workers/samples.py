"""Sample media the project may legally ship: made here from public-domain stills and speech synthesis.

Used by ``make demo`` (``deepscan samples DIR``) and by the tests, so both see the same inputs:
- ``face.jpg``: the astronaut portrait bundled with scikit-image (NASA, public domain);
- ``jpeg_named.mp4``: the same JPEG behind a video extension (media type is decided by content);
- ``talking_face.mp4``: a 6 s H.264 video of that portrait, slowly zooming, with espeak-ng speech;
- ``speech.wav``: espeak-ng speech, 16 kHz;
- ``no_face.png`` (scikit-image's coffee cup), ``corrupt.jpg``, ``notes.txt``, ``silence.wav``,
  ``short.wav``: inputs that must come back with a reason, not a verdict.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import wave
from pathlib import Path

import cv2
import numpy as np

SPEECH_TEXT = (
    "The birch canoe slid on the smooth planks. Glue the sheet to the dark blue background. "
    "It is easy to tell the depth of a well."
)  # Harvard sentences, list 1 (IEEE 1969, public domain)
SAMPLE_RATE_HZ = 16_000
VIDEO_DURATION_S = 6


def _run(cmd: list[str]) -> None:
    proc = subprocess.run(cmd, capture_output=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[0]} failed: {proc.stderr.decode(errors='replace')[-500:]}")


def require(binary: str, package: str) -> str:
    path = shutil.which(binary)
    if path is None:
        raise RuntimeError(f"{binary} is not installed (Debian package: {package})")
    return path


def write_wav(path: Path, signal: np.ndarray, rate: int = SAMPLE_RATE_HZ) -> Path:
    pcm = (np.clip(signal, -1.0, 1.0) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(rate)
        f.writeframes(pcm.tobytes())
    return path


def speech(path: Path, text: str = SPEECH_TEXT, voice: str = "en-us") -> Path:
    """Synthesise ``text`` with espeak-ng into a 16 kHz mono WAV."""
    require("espeak-ng", "espeak-ng")
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "raw.wav"
        _run(["espeak-ng", "-v", voice, "-s", "150", "-w", str(raw), text])
        _run(["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-i", str(raw), "-ar", str(SAMPLE_RATE_HZ),
              "-ac", "1", str(path)])  # fmt: skip
    return path


def face_image() -> np.ndarray:
    """The astronaut portrait, RGB uint8 (512, 512, 3)."""
    from skimage import data

    return np.ascontiguousarray(data.astronaut())


def talking_face_video(
    path: Path, image: np.ndarray, audio: Path | None, duration_s: int = VIDEO_DURATION_S
) -> Path:
    """A video of ``image`` with a slow zoom (so frames differ) and an optional soundtrack."""
    require("ffmpeg", "ffmpeg")
    with tempfile.TemporaryDirectory() as tmp:
        still = Path(tmp) / "still.png"
        cv2.imwrite(str(still), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        fps = 25
        zoom = f"zoompan=z='min(1+0.002*on,1.3)':d={duration_s * fps}:s=640x640:fps={fps}"
        cmd = ["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-loop", "1", "-i", str(still)]
        if audio is not None:
            cmd += ["-i", str(audio)]
        cmd += [
            "-vf",
            f"{zoom},format=yuv420p",
            "-t",
            str(duration_s),
            "-c:v",
            "libx264",
            "-preset",
            "veryfast",
        ]
        cmd += ["-c:a", "aac", "-b:a", "64k"] if audio is not None else []
        _run([*cmd, str(path)])
    return path


def write_samples(directory: str | Path) -> list[Path]:
    """Write the sample set into ``directory``; returns the files written."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    image = face_image()
    ok, jpeg = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 92])
    assert ok
    (out / "face.jpg").write_bytes(jpeg.tobytes())
    (out / "jpeg_named.mp4").write_bytes(jpeg.tobytes())
    from skimage import data

    cv2.imwrite(str(out / "no_face.png"), cv2.cvtColor(data.coffee(), cv2.COLOR_RGB2BGR))
    rng = np.random.default_rng(0)
    (out / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0" + rng.bytes(4096))
    (out / "notes.txt").write_text("Not media: a note that was uploaded by mistake.\n")
    speech(out / "speech.wav")
    talking_face_video(out / "talking_face.mp4", image, out / "speech.wav")
    write_wav(out / "silence.wav", np.zeros(3 * SAMPLE_RATE_HZ, dtype=np.float32))
    t = np.arange(int(0.4 * SAMPLE_RATE_HZ)) / SAMPLE_RATE_HZ
    write_wav(out / "short.wav", 0.3 * np.sin(2 * np.pi * 220 * t))
    return sorted(out.iterdir())


def upload_samples(
    directory: Path, uri: str, *, endpoint_url: str | None, archive_name: str = "archive/samples.zip"
) -> list[str]:
    """Put every file below ``directory`` under ``s3://bucket/prefix`` (keys relative to the folder;
    the bucket is created if needed), plus one zip of the folder's top-level files at ``archive_name``
    below the prefix, so that a scan meets an archive too. Returns the URIs written."""
    import io
    import zipfile

    from workers.storage import s3_client, split_s3_uri

    bucket, prefix = split_s3_uri(uri)
    prefix = f"{prefix.rstrip('/')}/" if prefix else ""
    client = s3_client(endpoint_url)
    if bucket not in {b["Name"] for b in client.list_buckets().get("Buckets", [])}:
        client.create_bucket(Bucket=bucket)
    files = sorted(p for p in directory.rglob("*") if p.is_file())
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in files:
            if path.parent == directory:
                zf.write(path, arcname=path.name)
    objects = [(f"{prefix}{path.relative_to(directory).as_posix()}", path.read_bytes()) for path in files]
    objects.append((f"{prefix}{archive_name}", archive.getvalue()))
    for key, body in objects:
        client.put_object(Bucket=bucket, Key=key, Body=body)
    return [f"s3://{bucket}/{key}" for key, _ in objects]
