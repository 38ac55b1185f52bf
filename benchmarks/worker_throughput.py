"""Objects per hour through real workers, first-object latency after a worker starts, and worker memory.

Starts its own services on loopback (redis-server, moto's S3 server, a SQLite file), uploads copies of
the sample face image (each re-encoded so every object is new) and talking-face videos, starts one
``deepscan worker`` on both queues, and times, from the database's own clocks (a scan's ``created_at``
to its last row's ``updated_at``):

- worker start: process start to "ready" and "models loaded and warmed" in its log;
- first object: a scan of one image, queued the moment the worker is ready, against the same scan of one
  image after everything else (the hundredth object);
- steady state: a scan of ``--images`` images, then one of ``--videos`` videos (soundtracks scored);
- memory: the peak resident set (VmHWM) of the worker's pool processes.

    python benchmarks/worker_throughput.py [--images 40] [--videos 4] [--video-s 10] [--concurrency 1]
        [--pool threads --batch-wait-ms 200]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
REPO = Path(__file__).resolve().parents[1]
AWS = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1"}
BUCKET = "bench"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_for(condition: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.1)


def image_variants(n: int) -> list[bytes]:
    """``n`` different JPEGs of the sample face (quality and a one-pixel mark vary)."""
    import cv2

    from workers.samples import face_image

    face = cv2.cvtColor(face_image(), cv2.COLOR_RGB2BGR)
    out = []
    for i in range(n):
        marked = face.copy()
        marked[0, i % face.shape[1]] = (i * 37) % 256
        ok, data = cv2.imencode(".jpg", marked, [cv2.IMWRITE_JPEG_QUALITY, 85 + i % 10])
        assert ok
        out.append(data.tobytes())
    return out


def scan_seconds(run: Any, engine: Any, prefix: str) -> tuple[float, int]:
    """Run ``deepscan scan PREFIX --wait``; the scan's time from the database and its object count."""
    from sqlalchemy import text

    done = run("scan", f"s3://{BUCKET}/{prefix}", "--wait", "--timeout", "3600")
    final = json.loads(done.stdout.splitlines()[-1])
    assert final["status"] == "complete", done.stdout + done.stderr
    with engine.connect() as connection:
        row = connection.execute(
            text(
                "SELECT s.created_at AS started, MAX(r.updated_at) AS last, COUNT(r.id) AS n FROM scans s "
                "JOIN scan_objects o ON o.scan_id = s.id JOIN results r ON r.uri = o.uri "
                "WHERE s.id = :id GROUP BY s.created_at"
            ),
            {"id": final["scan_id"]},
        ).one()
    started, last = (_aware(v) for v in (row.started, row.last))
    return (last - started).total_seconds(), int(row.n)


def _aware(value: Any) -> Any:
    from datetime import datetime, timezone

    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


def peak_rss_mib(worker: subprocess.Popen[bytes]) -> float:
    """The largest peak resident set of the worker's processes (its pool's children, or itself)."""
    children = Path(f"/proc/{worker.pid}/task/{worker.pid}/children").read_text().split()
    peaks = []
    for pid in [*children, str(worker.pid)]:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                peaks.append(int(line.split()[1]) / 1024)
    return max(peaks, default=0.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=40)
    parser.add_argument("--videos", type=int, default=4)
    parser.add_argument("--video-s", type=int, default=10)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--pool", default="prefork", choices=("prefork", "threads"))
    parser.add_argument("--batch-wait-ms", type=int, default=0, help="DEEPSCAN_BATCH_WAIT_MS (threads)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    import boto3
    from moto.server import ThreadedMotoServer
    from sqlalchemy import create_engine

    sys.path.insert(0, str(REPO))
    from workers.samples import face_image, speech, talking_face_video

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        redis_port = free_port()
        redis = subprocess.Popen(
            ["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        moto.start()
        host, port = moto.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        database = f"sqlite:///{work / 'bench.db'}"
        env = {
            **os.environ,
            **AWS,
            "PYTHONPATH": str(REPO),
            "DEEPSCAN_BROKER_URL": f"redis://127.0.0.1:{redis_port}/0",
            "DEEPSCAN_DATABASE_URL": database,
            "DEEPSCAN_S3_ENDPOINT_URL": endpoint,
            "DEEPSCAN_LOG_LEVEL": "INFO",
            "DEEPSCAN_BATCH_WAIT_MS": str(args.batch_wait_ms),
        }

        def run(*cli: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [sys.executable, "-m", "workers.cli", *cli], env=env, cwd=work, capture_output=True, text=True
            )

        worker = None
        try:
            s3 = boto3.client("s3", endpoint_url=endpoint, **{k.lower(): v for k, v in AWS.items() if "KEY" in k},
                              region_name=AWS["AWS_DEFAULT_REGION"])  # fmt: skip
            s3.create_bucket(Bucket=BUCKET)
            images = image_variants(args.images + 1)
            s3.put_object(Bucket=BUCKET, Key="first/face.jpg", Body=images[0])
            s3.put_object(Bucket=BUCKET, Key="later/face.jpg", Body=images[0])
            for i, data in enumerate(images[1:]):
                s3.put_object(Bucket=BUCKET, Key=f"images/face_{i:04d}.jpg", Body=data)
            voice = speech(work / "speech.wav")
            video = talking_face_video(work / "video.mp4", face_image(), voice, args.video_s).read_bytes()
            for i in range(args.videos):  # the same bytes under other keys: each key is analysed
                s3.put_object(Bucket=BUCKET, Key=f"videos/v{i}.mp4", Body=video)
            run("db", "upgrade")
            engine = create_engine(database)

            log = work / "worker.log"
            started = time.perf_counter()
            worker = subprocess.Popen(
                [sys.executable, "-m", "workers.cli", "worker", "--queues", "light,gpu", "--pool", args.pool,
                 "--concurrency", str(args.concurrency), "--hostname", "bench@%h"],
                env=env, cwd=work, stdout=log.open("wb"), stderr=subprocess.STDOUT,
            )  # fmt: skip
            # ready: consuming, and (a prefork child loads them after the worker says "ready.") warmed models
            wait_for(lambda: " ready." in log.read_text(errors="replace"), 600, "worker ready")
            wait_for(lambda: "models loaded and warmed" in log.read_text(errors="replace"), 600, "models")
            worker_start_s = time.perf_counter() - started
            first_s, _ = scan_seconds(run, engine, "first/")
            images_s, n_images = scan_seconds(run, engine, "images/")
            videos_s, n_videos = scan_seconds(run, engine, "videos/")
            later_s, _ = scan_seconds(run, engine, "later/")
            rss = peak_rss_mib(worker)
        finally:
            if worker is not None:
                worker.terminate()
                worker.wait(timeout=60)
            moto.stop()
            redis.terminate()
    per_image = images_s / n_images
    report = {
        "date": date.today().isoformat(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "pool": args.pool,
        "concurrency": args.concurrency,
        "batch_wait_ms": args.batch_wait_ms,
        "worker_start_to_ready_s": round(worker_start_s, 1),
        "first_image_s": round(first_s, 2),
        "later_single_image_s": round(later_s, 2),
        "first_over_later": round(first_s / later_s, 2),
        "steady_image_s": round(per_image, 2),
        "images_per_hour": round(3600 / per_image),
        "video_s_each": round(videos_s / n_videos, 2),
        "video_length_s": args.video_s,
        "video_real_time_factor": round(videos_s / n_videos / args.video_s, 3),
        "videos_per_hour": round(3600 * n_videos / videos_s),
        "worker_peak_rss_mib": round(rss),
    }
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
