"""The one module that reads media files. Everything after it takes arrays.

Media type is decided by content, never by the file name: a ``.mp4`` holding a JPEG is an image. Images
are decoded with OpenCV; video frames (one per second) and soundtracks with the system ``ffmpeg`` through
ffmpeg-python; audio files with soundfile, resampled by librosa, with ffmpeg for containers soundfile
cannot read (mp3, m4a, a video's soundtrack).
"""

from __future__ import annotations

import hashlib
import json
import logging
import subprocess
from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import cv2
import numpy as np

from pipeline.errors import MediaDecodeError, UnsupportedMediaError

logger = logging.getLogger(__name__)

MediaType = Literal["image", "video", "audio", "archive", "unknown"]

SAMPLE_RATE_HZ = 16_000  # every audio member works at 16 kHz mono, the rate of LibriSpeech and ASVspoof
# A rate a header may claim but no recording has: under 4 kHz (a 2 kHz band) little of speech is left, and
# resampling multiplies the samples by SAMPLE_RATE_HZ / rate (a 4 kB WAV claiming 1 Hz decodes to 128 MB).
MIN_SAMPLE_RATE_HZ = 4_000
FRAME_INTERVAL_S = 1.0  # videos are judged on one frame per second
PROBE_TIMEOUT_S = 30.0
HASH_BLOCK_BYTES = 1 << 20  # read 1 MiB at a time: bounded memory for any file size
# A decoded image costs 3 bytes a pixel, twice over while BGR becomes RGB: 100 megapixels (a 10000 x 10000
# scan) is 600 MB. PNG, BMP and JPEG headers are checked before decoding (``declared_image_size``); for
# the other formats OpenCV's own guard applies, OPENCV_IO_MAX_IMAGE_PIXELS (default 2**30 pixels, 6 GB;
# read when cv2 is loaded, so it is set in the worker's environment, not here: see SECURITY.md).
MAX_IMAGE_PIXELS = 100_000_000
# A video frame is read whole from ffmpeg's pipe: 8192 x 8192 (past 8K UHD) is 200 MB of RGB.
MAX_VIDEO_PIXELS = 8192 * 8192
# One chord part per segment: a header claiming years would queue millions. 12 h is past any film.
MAX_VIDEO_DURATION_S = 12 * 3600.0
_JPEG_MAX_SEGMENTS = 256  # markers walked before the frame header; real files have a handful
# JPEG start-of-frame markers (baseline, progressive, lossless...): every C0-CF but DHT, JPG and DAC.
_JPEG_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}

# Leading bytes of the still-image formats OpenCV decodes. Checked before ffprobe because it is free.
_IMAGE_SIGNATURES: tuple[tuple[int, bytes], ...] = (
    (0, b"\xff\xd8\xff"),  # JPEG
    (0, b"\x89PNG\r\n\x1a\n"),  # PNG
    (0, b"BM"),  # BMP
    (0, b"II*\x00"),  # TIFF, little-endian
    (0, b"MM\x00*"),  # TIFF, big-endian
    (8, b"WEBP"),  # RIFF....WEBP
)
# The compressed streams are those tarfile's "r:*" reads; one holding no tar is a decode_error there.
_ARCHIVE_SIGNATURES: tuple[tuple[int, bytes], ...] = (
    (0, b"PK\x03\x04"),  # zip
    (0, b"\x1f\x8b"),  # gzip (tar.gz)
    (0, b"BZh"),  # bzip2 (tar.bz2)
    (0, b"\xfd7zXZ\x00"),  # xz (tar.xz)
    (257, b"ustar"),  # tar
)
_SNIFF_BYTES = 512
# ffprobe "detects" a video stream in plain text (the tty demuxer's ANSI art): never media for us.
_NON_MEDIA_CODECS = frozenset({"ansi", "bin_data", "tty"})
_STILL_IMAGE_FORMAT_SUFFIXES = ("_pipe", "image2")


@dataclass(frozen=True)
class VideoInfo:
    """What ffprobe says about a video: the facts the frame sampler and the audio scorer need."""

    duration_s: float
    width: int
    height: int
    fps: float
    has_audio: bool


def _matches(head: bytes, signatures: tuple[tuple[int, bytes], ...]) -> bool:
    return any(head[offset : offset + len(magic)] == magic for offset, magic in signatures)


def _ffprobe(path: Path) -> dict:
    """Run ffprobe and return its JSON (format and streams). Raises MediaDecodeError when it refuses."""
    cmd = ["ffprobe", "-v", "error", "-print_format", "json", "-show_format", "-show_streams", str(path)]
    try:
        proc = subprocess.run(cmd, capture_output=True, timeout=PROBE_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired as e:
        raise MediaDecodeError(f"ffprobe did not answer within {PROBE_TIMEOUT_S:.0f} s") from e
    if proc.returncode != 0:
        message = proc.stderr.decode(errors="replace").strip().splitlines()
        raise MediaDecodeError(f"ffprobe could not read the file: {message[-1] if message else 'no output'}")
    return json.loads(proc.stdout or b"{}")


def detect_media_type(path: str | Path) -> MediaType:
    """Classify a file by its content.

    Returns ``unknown`` for content that no decoder here recognises; raises ``UnsupportedMediaError`` for
    an empty file, since there is nothing to classify.
    """
    path = Path(path)
    with path.open("rb") as f:
        head = f.read(_SNIFF_BYTES)
    if not head:
        raise UnsupportedMediaError("the file is empty")
    if _matches(head, _IMAGE_SIGNATURES):
        return "image"
    if _matches(head, _ARCHIVE_SIGNATURES):
        return "archive"
    try:
        info = _ffprobe(path)
    except MediaDecodeError:
        return "unknown"
    streams = [s for s in info.get("streams", []) if s.get("codec_name") not in _NON_MEDIA_CODECS]
    format_name = info.get("format", {}).get("format_name", "")
    video = [
        s
        for s in streams
        if s.get("codec_type") == "video" and not s.get("disposition", {}).get("attached_pic", 0)
    ]
    if video and format_name.endswith(_STILL_IMAGE_FORMAT_SUFFIXES):
        return "image"
    if video:
        return "video"
    if any(s.get("codec_type") == "audio" for s in streams):
        return "audio"
    return "unknown"


def read_file(path: str | Path) -> bytes:
    """A still image's bytes, read once: decoded by ``decode_image_bytes``, searched for provenance."""
    return Path(path).read_bytes()


def load_image(path: str | Path) -> np.ndarray:
    """Decode a still image. Returns RGB uint8, shape (H, W, 3)."""
    return decode_image_bytes(read_file(path))


def declared_image_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) as a PNG, BMP or JPEG header states it, read without decoding; None for other
    formats and for headers too damaged to say (the decoder then finds out)."""
    if data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR":
        return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    if data[:2] == b"BM" and len(data) >= 26:
        width = int.from_bytes(data[18:22], "little", signed=True)
        return abs(width), abs(int.from_bytes(data[22:26], "little", signed=True))  # negative: top-down
    if data[:2] != b"\xff\xd8":
        return None
    position = 2
    for _ in range(_JPEG_MAX_SEGMENTS):
        if position + 4 > len(data) or data[position] != 0xFF:
            return None
        marker = data[position + 1]
        if marker == 0xFF:  # fill byte
            position += 1
            continue
        if marker in _JPEG_SOF_MARKERS and position + 9 <= len(data):
            height = int.from_bytes(data[position + 5 : position + 7], "big")
            return int.from_bytes(data[position + 7 : position + 9], "big"), height
        if marker in (0xD9, 0xDA):  # end of image, start of scan: no frame header before them
            return None
        position += 2 + int.from_bytes(data[position + 2 : position + 4], "big")
    return None


def decode_image_bytes(data: bytes, *, max_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray:
    """Decode encoded image bytes. Returns RGB uint8, shape (H, W, 3).

    Raises ``UnsupportedMediaError`` for a header that claims more than ``max_pixels`` (a decompression
    bomb: a few bytes that would inflate to gigabytes), before anything is decoded.
    """
    size = declared_image_size(data)
    if size is not None and size[0] * size[1] > max_pixels:
        raise UnsupportedMediaError(
            f"the image header claims {size[0]} x {size[1]} pixels, more than the {max_pixels} decoded here"
        )
    try:
        bgr = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
    except cv2.error as e:  # raised rather than returned for an empty buffer, and for some corrupt ones
        raise MediaDecodeError(f"the image data could not be decoded: {e}") from e
    if bgr is None or bgr.size == 0:
        raise MediaDecodeError("the image data could not be decoded (truncated or corrupt)")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def probe_video(
    path: str | Path, *, max_pixels: int = MAX_VIDEO_PIXELS, max_duration_s: float = MAX_VIDEO_DURATION_S
) -> VideoInfo:
    """Duration, display size (rotation applied), frame rate and whether a soundtrack exists.

    Raises ``UnsupportedMediaError`` for a frame size over ``max_pixels`` or a duration over
    ``max_duration_s``: a header may claim anything, and frames are read whole, segments queued per
    stretch of the duration.
    """
    info = _ffprobe(Path(path))
    streams = info.get("streams", [])
    video = next((s for s in streams if s.get("codec_type") == "video"), None)
    if video is None:
        raise MediaDecodeError("the container has no video stream")
    width, height = int(video.get("width", 0)), int(video.get("height", 0))
    if width <= 0 or height <= 0:
        raise MediaDecodeError("the video stream has no frame size")
    if _rotation_deg(video) % 180 == 90:
        width, height = height, width
    duration = _first_float(video.get("duration"), info.get("format", {}).get("duration"))
    if duration is None or duration <= 0:
        raise MediaDecodeError("the video has no readable duration")
    if width * height > max_pixels:
        raise UnsupportedMediaError(
            f"the video claims {width} x {height} pixels a frame, more than the {max_pixels} decoded here"
        )
    if duration > max_duration_s:
        raise UnsupportedMediaError(
            f"the video claims {duration:.0f} s, longer than the {max_duration_s:.0f} s analysed here"
        )
    num, _, den = str(video.get("avg_frame_rate", "0/1")).partition("/")
    fps = float(num) / float(den) if den and float(den) else 0.0
    has_audio = any(s.get("codec_type") == "audio" for s in streams)
    return VideoInfo(duration_s=duration, width=width, height=height, fps=fps, has_audio=has_audio)


def _rotation_deg(stream: dict) -> int:
    for side in stream.get("side_data_list", []) or []:
        if "rotation" in side:
            return int(float(side["rotation"]))
    return int(float(stream.get("tags", {}).get("rotate", 0)))


def _first_float(*values: object) -> float | None:
    for value in values:
        try:
            return float(value)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            continue
    return None


def iter_video_frames(
    path: str | Path,
    info: VideoInfo,
    *,
    interval_s: float = FRAME_INTERVAL_S,
    start_s: float = 0.0,
    duration_s: float | None = None,
) -> Generator[tuple[float, np.ndarray], None, None]:
    """Yield ``(t_s, frame)`` for one frame every ``interval_s`` seconds of ``[start_s, start_s+duration_s)``.

    Frames are RGB uint8 arrays of shape (H, W, 3) at the display size in ``info``. The fps filter makes
    ffmpeg convert only the kept frames; frames stream through a pipe so memory stays at one frame. Every
    second the video reaches gets a frame: the fps filter alone rounds a last part-second under half away
    (a 0.4 s clip had no frame at all, and a 3.4 s one none for its fourth second); ``eof_action=pass``
    keeps the last frame for it.

    Frames that no other frame refers to (most B-frames) are never decoded (``-skip_frame noref``):
    nothing is decoded from a missing reference, so every kept frame is exactly what a full decode gives,
    and a second's frame is the nearest decoded one, a frame or two from the full decode's choice. On the
    research clips (h264, three B-frames of four) that is a third less decoding (``benchmarks/README.md``).
    Skipping B-frames that are references (``bidir``) would be cheaper and is wrong: later frames are
    predicted from them, and the kept frames came out at 28-39 dB PSNR against the true ones.
    """
    import ffmpeg  # ffmpeg-python; imported here so image-only callers never need it

    input_kwargs: dict[str, float | str] = {"skip_frame": "noref"}
    if start_s > 0:
        input_kwargs["ss"] = start_s
    if duration_s is not None:
        input_kwargs["t"] = duration_s
    stream = (
        ffmpeg.input(str(path), **input_kwargs)
        .filter("fps", fps=1.0 / interval_s, eof_action="pass")
        .output("pipe:", format="rawvideo", pix_fmt="rgb24")
        .global_args("-nostdin", "-loglevel", "error")
    )
    frame_bytes = info.width * info.height * 3
    process = stream.run_async(pipe_stdout=True, pipe_stderr=True)
    index = 0
    try:
        while True:
            chunk = process.stdout.read(frame_bytes)
            if len(chunk) < frame_bytes:
                break
            frame = np.frombuffer(chunk, dtype=np.uint8).reshape(info.height, info.width, 3)
            yield start_s + index * interval_s, frame
            index += 1
    finally:
        process.stdout.close()
        stderr = process.stderr.read().decode(errors="replace").strip()
        process.stderr.close()
        returncode = process.wait()
    if returncode != 0 and index == 0:
        raise MediaDecodeError(
            f"ffmpeg could not decode the video: {stderr.splitlines()[-1] if stderr else returncode}"
        )
    if returncode != 0:
        logger.warning("ffmpeg stopped early on %s after %d frames: %s", path, index, stderr)


def load_audio(path: str | Path, *, sample_rate_hz: int = SAMPLE_RATE_HZ) -> np.ndarray:
    """Decode any audio (or a video's soundtrack) to mono float32 in [-1, 1] at ``sample_rate_hz``.

    Returns shape (n_samples,). soundfile reads wav/flac/ogg directly; everything else goes through ffmpeg.
    """
    import soundfile as sf

    try:
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError):
        return _load_audio_ffmpeg(Path(path), sample_rate_hz)
    _check_sample_rate(rate)
    mono = data.mean(axis=1)
    if rate != sample_rate_hz:
        import librosa

        mono = librosa.resample(mono, orig_sr=rate, target_sr=sample_rate_hz, res_type="soxr_hq")
    return np.ascontiguousarray(mono, dtype=np.float32)


def _check_sample_rate(rate_hz: float) -> None:
    if rate_hz < MIN_SAMPLE_RATE_HZ:
        raise UnsupportedMediaError(
            f"the audio claims {rate_hz:g} samples a second, fewer than the {MIN_SAMPLE_RATE_HZ} analysed here"
        )


def _load_audio_ffmpeg(path: Path, sample_rate_hz: int) -> np.ndarray:
    for stream in _ffprobe(path).get("streams", []):  # any of them may be the one ffmpeg picks
        rate_hz = _first_float(stream.get("sample_rate"))
        if stream.get("codec_type") == "audio" and rate_hz:  # 0 or absent: not stated, ffmpeg finds out
            _check_sample_rate(rate_hz)
    cmd = [
        "ffmpeg", "-nostdin", "-loglevel", "error", "-i", str(path),
        "-vn", "-f", "s16le", "-ac", "1", "-acodec", "pcm_s16le", "-ar", str(sample_rate_hz), "-",
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, check=False)
    if proc.returncode != 0:
        message = proc.stderr.decode(errors="replace").strip().splitlines()
        raise MediaDecodeError(
            f"ffmpeg could not decode the audio: {message[-1] if message else proc.returncode}"
        )
    pcm = np.frombuffer(proc.stdout, dtype=np.int16)
    return pcm.astype(np.float32) / 32768.0


def sha256_file(path: str | Path) -> str:
    """The hex sha256 of a file's bytes (the content version of local objects, the checksum of pack files)."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(HASH_BLOCK_BYTES), b""):
            digest.update(block)
    return digest.hexdigest()
