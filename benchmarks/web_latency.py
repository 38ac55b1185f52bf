"""Upload to verdict through ``deepscan serve``: seconds for a face image and a 10 s video, and per explanation.

Starts ``deepscan serve`` (the configured pack, default the bundled one) on a free loopback port, waits
until the pack is loaded, then uploads each file over HTTP one after the other (``explain=never``) and
polls its job until it is done: "upload to verdict" is the wall time from the start of the POST to the
poll that saw it done (polls every 0.1 s). Then it fetches each job's explanation PNG and times that.

    python benchmarks/web_latency.py [--repeats 3] [--video-s 10]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
REPO = Path(__file__).resolve().parents[1]
POLL_S = 0.1


def wait_done(client: Any, url: str) -> dict[str, Any]:
    while True:
        job: dict[str, Any] = client.get(url).json()
        if job["status"] in ("done", "failed"):
            return job
        time.sleep(POLL_S)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--video-s", type=int, default=10)
    args = parser.parse_args()

    import httpx

    sys.path.insert(0, str(REPO))
    from tests.workers.serving import free_port
    from workers.samples import face_image, speech, talking_face_video, write_samples

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        write_samples(work / "samples")
        image = work / "samples" / "face.jpg"
        video = talking_face_video(
            work / f"talking_face_{args.video_s}s.mp4",
            face_image(),
            speech(work / "speech.wav"),
            args.video_s,
        )
        port = free_port()
        env = {**os.environ, "PYTHONPATH": str(REPO), "DEEPSCAN_DATABASE_URL": f"sqlite:///{work / 'b.db'}"}
        log = (work / "serve.log").open("wb")
        server = subprocess.Popen(
            [sys.executable, "-m", "workers.cli", "serve", "--port", str(port)],
            env=env,
            cwd=work,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        base = f"http://127.0.0.1:{port}"
        started = time.perf_counter()
        try:
            with httpx.Client(base_url=base, timeout=600) as client:
                while True:
                    try:
                        if client.get("/healthz").json()["ready"]:
                            break
                    except httpx.TransportError:
                        pass
                    time.sleep(0.5)
                print(f"server ready (pack loaded) {time.perf_counter() - started:.1f} s after start")
                for path in (image, video):
                    totals, analyses, explains, jobs = [], [], [], []
                    for _ in range(args.repeats):
                        t0 = time.perf_counter()
                        files = {"file": (path.name, path.read_bytes(), "application/octet-stream")}
                        created = client.post("/api/v1/jobs", files=files, data={"explain": "never"}).json()
                        job = wait_done(client, created["url"])
                        totals.append(time.perf_counter() - t0)
                        analyses.append(job["timings"]["analysis_s"])
                        jobs.append(job)
                    for job in jobs:
                        t0 = time.perf_counter()
                        assert client.get(job["explanation_url"]).status_code == 200
                        explains.append(time.perf_counter() - t0)
                    result = jobs[-1]["result"]
                    print(
                        f"{path.name}: {result['media_type']} {result['label']} P(fake) {result['fake_probability']}"
                        f" | upload to verdict {', '.join(f'{t:.2f}' for t in totals)} s"
                        f" (median {statistics.median(totals):.2f}); analysis {statistics.median(analyses):.2f} s"
                        f" | explanation {', '.join(f'{t:.1f}' for t in explains)} s"
                    )
        finally:
            server.terminate()
            server.wait(timeout=30)
            log.close()


if __name__ == "__main__":
    main()
