"""Shared fixtures: the demo bundle (built once), real Redis, and one real server process."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import redis

from benchmarks.server import Server, free_port, stock_engine, stop, wait_ready
from tests.otlp import Collector, otlp_collector

REPO = Path(__file__).resolve().parents[1]
# Tighter than the defaults, so the bad-input tests can exceed them with small files.
# Two tenants. Sessions live in Redis, so the server requires API keys.
API_KEY, OTHER_KEY = "test-key-1", "test-key-2"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
SERVER_LIMITS = {
    "PANDASERVE_MAX_FILE_BYTES": 4 * 2**20,
    "PANDASERVE_MAX_IMAGE_SIDE": 8192,
    "PANDASERVE_MAX_AUDIO_SECONDS": 30,
    "PANDASERVE_MAX_VIDEO_SECONDS": 20,
    "PANDASERVE_MAX_VIDEO_PIXELS": 1280 * 720,
    "PANDASERVE_MAX_IMU_SAMPLES": 20_000,
    "PANDASERVE_MAX_VIDEO_FRAMES_PER_SAMPLE": 200,
}


@pytest.fixture(scope="session")
def demo_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from training.demo_bundle import build_demo_bundle

    path = tmp_path_factory.mktemp("bundles") / "demo"
    build_demo_bundle(path, seed=0)
    return path


# Every file whose content the trained demo bundle depends on: the cache key of `seeing_bundle`.
RECIPE_SOURCES = [*sorted((REPO / "training").glob("*.py")), *sorted((REPO / "encoders").rglob("*.py"))]


@pytest.fixture(scope="session")
def seeing_bundle() -> Path:
    """The trained demo bundle (training/demo_recipe.py). It takes minutes to build, so it is kept in
    .cache/ under a digest of the recipe's sources and rebuilt only when one of them changes."""
    from training.demo_recipe import build_seeing_bundle

    digest = hashlib.sha256(b"".join(p.read_bytes() for p in RECIPE_SOURCES)).hexdigest()[:16]
    path = REPO / ".cache" / f"demo-bundle-{digest}"
    if not (path / "manifest.json").exists():
        build_seeing_bundle(path, seed=0)
    return path


@pytest.fixture(scope="session")
def redis_url() -> str:
    return os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")


@pytest.fixture(scope="session")
def collector() -> Iterator[Collector]:
    with otlp_collector() as c:
        yield c


@pytest.fixture(scope="session")
def server(
    demo_bundle: Path, redis_url: str, collector: Collector, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    # Traced to the test collector; spans are exported every 100 ms instead of every 5 s.
    tracing = {"PANDASERVE_OTLP_TRACES_ENDPOINT": collector.url, "OTEL_BSP_SCHEDULE_DELAY": "100"}
    # No module of this server tests the rate limit (test_lifecycle does, on its own server), and
    # schemathesis sends 1,000+ requests in under a minute: at the default 600 per minute, shared
    # through Redis with every other run of the suite on this machine, half of them were 429s.
    unlimited = {"PANDASERVE_RATE_LIMIT_RPM": "1000000"}
    with running_server(demo_bundle, redis_url, tmp_path_factory.mktemp("server"), tracing | unlimited) as running:
        yield running.url


@dataclass
class RunningServer:
    url: str
    proc: subprocess.Popen
    log: Path


@contextmanager
def running_server(
    bundle: Path, redis_url: str, log_dir: Path, extra_env: dict[str, str] | None = None
) -> Iterator[RunningServer]:
    """`pandaserve serve` on a free port with sessions in Redis, ready (/readyz is 200); `env` adds settings."""
    env = {**os.environ, "REDIS_URL": redis_url, "PANDASERVE_KV_CACHE_GIB": "1", "PYTHONWARNINGS": "default"}
    env |= {k: str(v) for k, v in SERVER_LIMITS.items()} | {"PANDASERVE_API_KEYS": f"{API_KEY},{OTHER_KEY}"}
    env |= extra_env or {}
    log_path = log_dir / "server.log"
    # The port is free when chosen but the server binds it only after loading the engine (~20 s), and
    # vLLM's own processes open ports meanwhile: if another process took it, start again on another.
    for _ in range(3):
        port = free_port()
        cmd = [sys.executable, "-m", "pandaserve", "serve", "--bundle", str(bundle), "--port", str(port)]
        with log_path.open("wb") as log:
            proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        base = f"http://127.0.0.1:{port}"
        try:
            wait_ready(base, proc, log_path)
            break
        except RuntimeError:
            stop(proc)
            if "address already in use" not in log_path.read_text():
                raise
    else:
        raise RuntimeError("every port tried was taken before the server could bind it")
    try:
        yield RunningServer(base, proc, log_path)
    finally:
        stop(proc)


@contextmanager
def running_encoders(bundle: Path, redis_url: str, log_dir: Path) -> Iterator[RunningServer]:
    """`pandaserve encoders serve` on a free port (the embedding cache in Redis), ready (/readyz 200)."""
    env = {**os.environ, "REDIS_URL": redis_url, "PYTHONWARNINGS": "default"}
    env |= {k: str(v) for k, v in SERVER_LIMITS.items()}
    port = free_port()
    log_path = log_dir / "encoders.log"
    cmd = [sys.executable, "-m", "pandaserve", "encoders", "serve", "--bundle", str(bundle), "--port", str(port)]
    with log_path.open("wb") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base, proc, log_path)
        yield RunningServer(base, proc, log_path)
    finally:
        stop(proc)


class OwnRedis:
    """A Redis of a test module's own, never the shared one, so it can be stopped, filled or made
    read-only; with an append-only file so its data survives a restart."""

    def __init__(self, directory: Path) -> None:
        self.dir, self.port = directory, free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        cmd = [
            shutil.which("redis-server") or "redis-server",
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
            "--dir",
            str(self.dir),
        ]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
        client = redis.Redis.from_url(self.url)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                client.ping()
                return
            except redis.ConnectionError:
                time.sleep(0.05)
        raise TimeoutError("redis-server did not start")

    def stop(self) -> None:
        assert self.proc is not None
        self.proc.terminate()  # SIGTERM: Redis flushes its append-only file and exits
        self.proc.wait(timeout=20)


@pytest.fixture(scope="module")
def own_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OwnRedis]:
    r = OwnRedis(tmp_path_factory.mktemp("redis"))
    r.start()
    yield r
    if r.proc is not None and r.proc.poll() is None:
        r.stop()


@contextmanager
def engine_killed(
    api: RunningServer,
    engine: Server,
    bundle: Path,
    log_dir: Path,
    while_down: Callable[[httpx.Client], None] | None = None,
) -> Iterator[Server]:
    """The API's stock engine (`stock_engine`, a process group of its own) killed with SIGKILL: a
    turn is 503 `engine_error` naming the engine and /readyz 503 (then `while_down`, with a client
    of the API); then a new engine on the same port, and the API serves again without a restart.
    Yields the new engine, stopped on exit."""
    files = [("image", ("a.png", _picture(9)))]
    with suppress(ProcessLookupError):  # already killed by the caller, mid-turn
        os.killpg(engine.proc.pid, signal.SIGKILL)
    engine.proc.wait()
    with httpx.Client(base_url=api.url, headers=AUTH, timeout=60) as client:
        r = client.post("/chat", data={"message": "Still there?", "max_tokens": "4"}, files=files)
        assert r.status_code == 503 and r.json()["error"]["type"] == "engine_error", r.text
        assert "inference engine" in r.json()["error"]["message"]
        assert client.get("/readyz").status_code == 503
        if while_down is not None:
            while_down(client)
        port = int(engine.url.rsplit(":", 1)[1])
        with stock_engine(bundle, log_dir, port=port) as again:
            wait_ready(api.url, api.proc, api.log, timeout_s=120)  # readyz again, the API never restarted
            r = client.post("/chat", data={"message": "Back?", "max_tokens": "4"}, files=files)
            assert r.status_code == 200, r.text
            yield again


def _picture(seed: int) -> bytes:
    from tests.media import picture  # here: tests.media imports the decoders, conftest should not at start

    return picture(seed, (64, 64))
