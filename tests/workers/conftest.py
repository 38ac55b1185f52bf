"""Fixtures for the distributed scanner: the running Redis, an S3 server on loopback (moto's server mode),
real worker processes started through ``deepscan worker``, and the CLI as a subprocess.

Each ``Stack`` gets a Redis database of its own, flushed before and after, so that workers of one test
never take another test's tasks. Workers run in their own process group: a test can SIGKILL one the way a
machine dies, parent and pool children at once.
"""

from __future__ import annotations

import contextlib
import copy
import io
import itertools
import json
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import uuid
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import pytest
from sqlalchemy import text

from db.session import make_engine, migrate
from tests.conftest import REPO, missing_service
from tests.workers.serving import browser  # noqa: F401  (headless Chromium for the web app's tests)

REDIS_URL = os.environ.get("DEEPSCAN_TEST_REDIS_URL", "redis://127.0.0.1:6379")


def _redis_databases() -> Iterator[int]:
    """One Redis database per stack, 10-15 (0-9 are left to people running things). Under pytest-xdist
    (``make test`` runs two test processes) each process cycles through a share of its own."""
    databases = range(10, 16)
    index = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw"))
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if count > len(databases):
        raise RuntimeError(f"more test processes than Redis databases 10-15: run at most {len(databases)}")
    if index >= count:  # a process xdist started in place of a crashed one: its number is past the count
        raise RuntimeError("a restarted test process would share another's Redis databases")
    return itertools.cycle(databases[index::count])


REDIS_DBS = _redis_databases()
AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}
WORKER_STOP_TIMEOUT_S = 20
FREEZE_SETTLE_S = 0.3

T = TypeVar("T")


def wait_for(
    predicate: Callable[[], T],
    *,
    timeout_s: float,
    what: str,
    poll_s: float = 0.25,
    context: Callable[[], str] | None = None,
) -> T:
    """Poll ``predicate`` until it returns something truthy; fail the test after ``timeout_s``, with what
    ``context`` returns then (a worker's log, say) in the message."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            found = f"\n{context()}" if context else ""
            pytest.fail(f"timed out after {timeout_s:.0f} s waiting for {what}{found}")
        time.sleep(poll_s)


@pytest.fixture(scope="session")
def redis_base() -> str:
    import redis

    client = redis.Redis.from_url(f"{REDIS_URL}/0", socket_connect_timeout=2)
    try:
        client.ping()
    except redis.ConnectionError as e:
        missing_service(f"Redis unreachable at {REDIS_URL}: {e}")
    finally:
        client.close()
    return REDIS_URL


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """moto's S3 in server mode on a free loopback port, for the whole session."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


def s3_client(endpoint: str) -> Any:
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=AWS_ENV["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=AWS_ENV["AWS_SECRET_ACCESS_KEY"],
        region_name=AWS_ENV["AWS_DEFAULT_REGION"],
    )


def zip_bytes(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


class LoopbackRelay:
    """A TCP relay on a free loopback port in front of ``target`` (host, port): each connection it
    accepts goes to ``_relay`` on a thread of its own, until ``close``. Subclasses set what ``_relay``
    reads before calling ``__init__``, which starts accepting."""

    POLL_S = 0.2

    def __init__(self, target: tuple[str, int]) -> None:
        self._target = target
        self._stop = threading.Event()
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = self._server.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._server.accept()
            except OSError:  # closed
                return
            self._handle(client)

    def _handle(self, client: socket.socket) -> None:
        threading.Thread(target=self._relay, args=(client,), daemon=True).start()

    def _relay(self, client: socket.socket) -> None:
        raise NotImplementedError

    def close(self) -> None:
        self._stop.set()
        self._server.close()


def _host_and_port(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or 80


class StallingProxy(LoopbackRelay):
    """A TCP relay on loopback in front of the S3 server that holds, unanswered, every GET whose request
    line contains ``marker``: an object download that hangs, as over a dead connection.

    ``stalled`` lists the request lines it held, in order. Everything else passes through unchanged.
    """

    def __init__(self, target_url: str, marker: str) -> None:
        self._marker = marker.encode()
        self.stalled: list[str] = []
        super().__init__(_host_and_port(target_url))

    def _relay(self, client: socket.socket) -> None:
        with client, socket.create_connection(self._target) as upstream:
            while not self._stop.is_set():
                readable, _, _ = select.select([client, upstream], [], [], self.POLL_S)
                for source in readable:
                    data = source.recv(65536)
                    if not data:
                        return
                    line = data.split(b"\r\n", 1)[0]
                    if source is client and line.startswith(b"GET ") and self._marker in line:
                        self.stalled.append(line.decode(errors="replace"))
                        self._hold(client)
                        return
                    (upstream if source is client else client).sendall(data)

    def _hold(self, client: socket.socket) -> None:
        """Read and drop whatever the client sends until it hangs up (or the proxy closes)."""
        while not self._stop.is_set():
            readable, _, _ = select.select([client], [], [], self.POLL_S)
            if readable and not client.recv(65536):
                return


class FaultyProxy(LoopbackRelay):
    """A TCP relay on loopback in front of the S3 server that faults the first ``faults`` GETs whose
    request line contains ``marker``: ``mode="slowdown"`` answers 503 SlowDown (S3 shedding load),
    ``"error500"`` 500 InternalError, ``"reset"`` resets the connection (a dropped link), and ``"slow"``
    passes the request but drips the response, ``SLOW_CHUNK`` bytes every ``SLOW_PAUSE_S``.
    ``faults=None`` faults every such GET.

    ``failed`` and ``passed`` list the request lines of matching GETs, in order (``failed``: faulted).
    """

    MODES = ("slowdown", "error500", "reset", "slow")
    SLOW_CHUNK, SLOW_PAUSE_S = 8192, 0.1  # the sample video (279 kB) then takes about 3.5 s
    SLOWDOWN = (
        b"<?xml version='1.0' encoding='UTF-8'?><Error><Code>SlowDown</Code>"
        b"<Message>Please reduce your request rate.</Message></Error>"
    )
    INTERNAL = (
        b"<?xml version='1.0' encoding='UTF-8'?><Error><Code>InternalError</Code>"
        b"<Message>We encountered an internal error. Please try again.</Message></Error>"
    )

    def __init__(self, target_url: str, marker: str, *, faults: int | None, mode: str = "slowdown") -> None:
        assert mode in self.MODES, mode
        self._marker, self._faults, self._mode = marker.encode(), faults, mode
        self._lock = threading.Lock()
        self.failed: list[str] = []
        self.passed: list[str] = []
        super().__init__(_host_and_port(target_url))

    def _should_fail(self, line: bytes) -> bool:
        with self._lock:
            fail = self._faults is None or len(self.failed) < self._faults
            (self.failed if fail else self.passed).append(line.decode(errors="replace"))
            return fail

    def _relay(self, client: socket.socket) -> None:
        slow = False  # this connection's responses drip (mode "slow", once a matching GET came through)
        with client, socket.create_connection(self._target) as upstream:
            while not self._stop.is_set():
                readable, _, _ = select.select([client, upstream], [], [], self.POLL_S)
                for source in readable:
                    data = source.recv(65536)
                    if not data:
                        return
                    line = data.split(b"\r\n", 1)[0]
                    matching = source is client and line.startswith(b"GET ") and self._marker in line
                    if matching and self._should_fail(line):
                        if self._mode != "slow":
                            self._fail(client)
                            return
                        slow = True
                    if slow and source is upstream:
                        self._drip(client, data)
                    else:
                        (upstream if source is client else client).sendall(data)

    def _drip(self, client: socket.socket, data: bytes) -> None:
        for start in range(0, len(data), self.SLOW_CHUNK):
            client.sendall(data[start : start + self.SLOW_CHUNK])
            time.sleep(self.SLOW_PAUSE_S)

    def _fail(self, client: socket.socket) -> None:
        if self._mode == "reset":  # linger 0: close sends RST, the client sees "connection reset by peer"
            client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            return
        status, body = (
            ("503 Slow Down", self.SLOWDOWN) if self._mode == "slowdown" else ("500", self.INTERNAL)
        )
        head = (
            f"HTTP/1.1 {status}\r\nContent-Type: application/xml\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        )
        client.sendall(head.encode() + body)


class OutageProxy(LoopbackRelay):
    """A TCP relay on loopback in front of a server (PostgreSQL) that can go down: ``down()`` cuts every
    relayed connection and refuses new ones (accepted, then reset) until ``up()``. The server itself is
    never touched."""

    def __init__(self, host: str, port: int) -> None:
        self._down = threading.Event()
        self.refused = 0
        super().__init__((host, port))

    def down(self) -> None:
        self._down.set()

    def up(self) -> None:
        self._down.clear()

    def _handle(self, client: socket.socket) -> None:
        if self._down.is_set():
            self.refused += 1
            client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            client.close()
            return
        super()._handle(client)

    def _relay(self, client: socket.socket) -> None:
        with client, socket.create_connection(self._target) as upstream:
            while not self._stop.is_set() and not self._down.is_set():
                readable, _, _ = select.select([client, upstream], [], [], self.POLL_S)
                for source in readable:
                    data = source.recv(65536)
                    if not data:
                        return
                    (upstream if source is client else client).sendall(data)
            client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


class PrivateRedis:
    """A redis-server of the test's own on a free loopback port, persisting every write (AOF, fsync
    always) as a broker that must survive a restart should: ``restart`` kills it (SIGKILL) and starts it
    again on the same port and files. The shared server is never touched."""

    START_TIMEOUT_S = 15

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.restarts = 0
        self._process = self._start()

    def _start(self) -> subprocess.Popen[bytes]:
        import redis

        process = subprocess.Popen(
            ["redis-server", "--bind", "127.0.0.1", "--port", str(self.port), "--dir", str(self.directory),
             "--appendonly", "yes", "--appendfsync", "always", "--save", ""],
            stdout=(self.directory / "redis.log").open("ab"),
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        client = redis.Redis.from_url(self.url, socket_connect_timeout=1)
        deadline = time.monotonic() + self.START_TIMEOUT_S
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"redis-server did not start: {self.directory / 'redis.log'}"
                    ) from None
                time.sleep(0.1)
        client.close()
        return process

    def restart(self, down_s: float) -> None:
        self._process.kill()
        self._process.wait(timeout=10)
        time.sleep(down_s)
        self._process = self._start()
        self.restarts += 1

    def stop(self) -> None:
        self._process.kill()
        self._process.wait(timeout=10)


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    import shutil

    if shutil.which("redis-server") is None:
        missing_service("redis-server is not installed (make test installs it with the services)")
    server = PrivateRedis(tmp_path / "redis")
    try:
        yield server
    finally:
        server.stop()


class Stack:
    """A bucket, a database, a Redis database, and the worker / beat / CLI processes that use them."""

    def __init__(self, *, database_url: str, redis_url: str, s3_endpoint: str, models_dir: Path, work: Path):
        self.database_url, self.redis_url, self.s3_endpoint = database_url, redis_url, s3_endpoint
        self.work = work
        self.bucket = f"deepscan-{uuid.uuid4().hex[:12]}"
        self.s3 = s3_client(s3_endpoint)
        self.s3.create_bucket(Bucket=self.bucket)
        self.env = {
            **os.environ,
            **AWS_ENV,
            "PYTHONPATH": str(REPO),
            "TF_CPP_MIN_LOG_LEVEL": "3",
            "DEEPSCAN_BROKER_URL": redis_url,
            "DEEPSCAN_DATABASE_URL": database_url,
            "DEEPSCAN_S3_ENDPOINT_URL": s3_endpoint,
            "DEEPSCAN_MODELS_DIR": str(models_dir),
            "DEEPSCAN_VIDEO_SEGMENT_S": "2",  # the 6 s sample video fans out into 3 segments
            "DEEPSCAN_VISIBILITY_TIMEOUT_S": "120",
            "DEEPSCAN_LOG_LEVEL": "INFO",
        }
        self.processes: list[subprocess.Popen[bytes]] = []
        self._views: list[Stack] = []
        migrate(database_url)  # the workers migrate too; the test reads the tables before they start
        self._engine = make_engine(database_url)
        self.redis().flushdb()

    # -- processes ------------------------------------------------------------------------------------

    def _spawn(self, args: list[str], log_name: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
        log = (self.work / log_name).open("wb")
        process = subprocess.Popen(
            [sys.executable, "-m", "workers.cli", *args],
            env={**self.env, **env},
            cwd=self.work,  # no stray .env from the repository
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: killpg reaches the pool children too
        )
        log.close()
        self.processes.append(process)
        return process

    def worker(
        self, name: str = "worker", *, pool: str = "prefork", concurrency: int = 1, **env: str
    ) -> subprocess.Popen[bytes]:
        """A ``deepscan worker`` on both queues (one pool process by default); its log is ``work/<name>.log``."""
        args = ["worker", "--queues", "light,gpu", "--pool", pool, "--concurrency", str(concurrency),
                "--hostname", f"{name}-{uuid.uuid4().hex[:6]}@%h"]  # fmt: skip
        return self._spawn(args, f"{name}.log", env)

    def beat(self, schedules: list[dict[str, Any]]) -> subprocess.Popen[bytes]:
        env = {"DEEPSCAN_SCHEDULES": json.dumps(schedules)}
        return self._spawn(["beat", "--schedule-file", str(self.work / "beat-schedule")], "beat.log", env)

    def log(self, name: str) -> str:
        path = self.work / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self, process: subprocess.Popen[bytes]) -> None:
        """Warm shutdown (SIGTERM to the group), SIGKILL if it does not end in time."""
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=WORKER_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.kill(process)

    def freeze(self, process: subprocess.Popen[bytes], settle_s: float = FREEZE_SETTLE_S) -> None:
        """SIGSTOP the whole process group: it holds what it took and acknowledges nothing until ``thaw``."""
        os.killpg(process.pid, signal.SIGSTOP)
        time.sleep(settle_s)  # a reply it had already written to Redis lands before anyone looks

    def thaw(self, process: subprocess.Popen[bytes]) -> None:
        os.killpg(process.pid, signal.SIGCONT)

    @staticmethod
    def pool_children(process: subprocess.Popen[bytes]) -> list[int]:
        """The pids of a worker's pool processes (its direct children)."""
        return [
            int(pid) for pid in Path(f"/proc/{process.pid}/task/{process.pid}/children").read_text().split()
        ]

    def kill(self, process: subprocess.Popen[bytes]) -> None:
        """SIGKILL the whole process group, as when a machine dies: nothing is acknowledged or cleaned up."""
        with contextlib.suppress(ProcessLookupError):  # the group is gone already
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=WORKER_STOP_TIMEOUT_S)

    def cli(
        self,
        *args: str,
        env: dict[str, str] | None = None,
        unset: tuple[str, ...] = (),
        timeout_s: float = 300,
    ) -> subprocess.CompletedProcess[str]:
        """``deepscan ARGS...`` run to completion, with this stack's settings (``env`` over them, the
        variables in ``unset`` removed: ``DEEPSCAN_BROKER_URL`` for the embedded default)."""
        return self._run(["-m", "workers.cli", *args], env=env, unset=unset, timeout_s=timeout_s)

    def python(
        self, code: str, *args: str, unset: tuple[str, ...] = (), timeout_s: float = 120
    ) -> subprocess.CompletedProcess[str]:
        """``python -c CODE ARGS...`` run to completion with this stack's settings: a snippet that queues
        tasks as a producer would, or runs the CLI under a measurement."""
        return self._run(["-c", code, *args], unset=unset, timeout_s=timeout_s)

    def _run(
        self,
        argv: list[str],
        *,
        env: dict[str, str] | None = None,
        unset: tuple[str, ...] = (),
        timeout_s: float,
    ) -> subprocess.CompletedProcess[str]:
        merged = {**self.env, **(env or {})}
        return subprocess.run(
            [sys.executable, *argv],
            env={k: v for k, v in merged.items() if k not in unset},
            cwd=self.work,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )

    def cli_in_background(self, *args: str) -> subprocess.Popen[str]:
        """``deepscan ARGS...`` started with this stack's settings; ``communicate`` collects its output."""
        return subprocess.Popen(
            [sys.executable, "-m", "workers.cli", *args],
            env=self.env,
            cwd=self.work,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def on_database(self, database_url: str) -> Stack:
        """The same bucket and Redis with another database: its CLI runs and ``rows`` use that one.

        Processes it starts write their logs beside the original's; ``close`` of the original stops
        everything.
        """
        view = copy.copy(self)
        view.database_url = database_url
        view.env = {**self.env, "DEEPSCAN_DATABASE_URL": database_url}
        view.processes = []
        migrate(database_url)
        view._engine = make_engine(database_url)
        self._views.append(view)
        return view

    def close(self) -> None:
        for view in self._views:
            for process in view.processes:
                self.stop(process)
            view._engine.dispose()
        for process in self.processes:
            self.stop(process)
        self.redis().flushdb()
        self._engine.dispose()

    # -- S3, Redis, database ------------------------------------------------------------------------------

    def put(self, key: str, data: bytes | Path) -> str:
        """Upload an object; returns its ETag without quotes."""
        body = data.read_bytes() if isinstance(data, Path) else data
        return str(self.s3.put_object(Bucket=self.bucket, Key=key, Body=body)["ETag"]).strip('"')

    def uri(self, key: str = "") -> str:
        return f"s3://{self.bucket}/{key}"

    def redis(self) -> Any:
        import redis

        return redis.Redis.from_url(self.redis_url)

    def query(self, sql: str, **params: Any) -> list[dict[str, Any]]:
        with self._engine.connect() as connection:
            return [dict(r._mapping) for r in connection.execute(text(sql), params)]

    def rows(self, prefix: str | None = None) -> dict[str, dict[str, Any]]:
        """The results rows under ``prefix`` (default: this stack's bucket), by URI."""
        prefix = prefix or f"s3://{self.bucket}/"
        found = self.query("SELECT * FROM results WHERE uri LIKE :p ORDER BY uri", p=f"{prefix}%")
        return {row["uri"]: row for row in found}

    def frames(self, uri: str) -> list[int]:
        sql = "SELECT f.second FROM frame_results f JOIN results r ON r.id = f.result_id WHERE r.uri = :u"
        return sorted(row["second"] for row in self.query(sql, u=uri))

    def scan(self, scan_id: int) -> dict[str, Any]:
        return self.query("SELECT * FROM scans WHERE id = :i", i=scan_id)[0]


@pytest.fixture
def stack_factory(
    redis_base: str, s3_endpoint: str, random_pack: Path, tmp_path: Path
) -> Iterator[Callable[..., Stack]]:
    """Make stacks on a database URL; every process they started is stopped at the end of the test."""
    stacks: list[Stack] = []

    def make(database_url: str, *, models_dir: Path | None = None, redis_url: str | None = None) -> Stack:
        """A stack on ``database_url``; on a Redis database of the shared server unless ``redis_url``."""
        work = tmp_path / f"stack{len(stacks)}"
        work.mkdir()
        stack = Stack(
            database_url=database_url,
            redis_url=redis_url or f"{redis_base}/{next(REDIS_DBS)}",
            s3_endpoint=s3_endpoint,
            models_dir=models_dir or random_pack,
            work=work,
        )
        stacks.append(stack)
        return stack

    try:
        yield make
    finally:
        for stack in stacks:
            stack.close()


@pytest.fixture(scope="session")
def random_pack_v2(random_pack: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The random pack under a new version number: what a model upgrade looks like to the scanner."""
    directory = tmp_path_factory.mktemp("pack_v2")
    for path in random_pack.iterdir():
        (directory / path.name).write_bytes(path.read_bytes())
    manifest = json.loads((directory / "manifest.json").read_text())
    manifest["version"] = "0.0.2"
    (directory / "manifest.json").write_text(json.dumps(manifest))
    return directory
