"""The real server as a subprocess (`pandaserve serve`), and its resident memory read from /proc for
the soak. tests/conftest.py starts its servers with the same helpers (free_port, wait_ready, stop)."""

from __future__ import annotations

import asyncio
import itertools
import os
import shlex
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
API_KEY = "bench-key"
START_TIMEOUT_S = 300
# The benchmark is one tenant sending as fast as it can: the per-key limits must not be what it measures.
BENCH_ENV = {
    "PANDASERVE_API_KEYS": API_KEY,
    "PANDASERVE_RATE_LIMIT_RPM": "100000000",
    "PANDASERVE_RATE_LIMIT_CONCURRENCY": "100000",
    "PANDASERVE_SESSION_TTL_S": "3600",  # the benchmark's sessions expire on their own
    "PANDASERVE_KV_CACHE_GIB": "1",
}


def redis_if_up(url: str) -> str | None:
    """`url` if a Redis answers there (sessions then live in Redis, as in production), else None (in memory)."""
    import redis

    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1)
        try:
            return url if client.ping() else None
        finally:
            client.close()
    except redis.RedisError:
        return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    url: str
    proc: subprocess.Popen[bytes]
    log: Path
    headers: dict[str, str] = field(default_factory=lambda: {"Authorization": f"Bearer {API_KEY}"})


@contextmanager
def serve(
    bundle: Path, log_dir: Path, redis_url: str | None, extra_env: dict[str, str] | None = None
) -> Iterator[Server]:
    """The server on a free port, ready (/readyz 200); terminated (drained) on exit."""
    port = free_port()
    env = {**os.environ, **BENCH_ENV, **(extra_env or {})}
    env.pop("REDIS_URL", None)
    if redis_url:
        env["REDIS_URL"] = redis_url
    log = log_dir / "server.log"
    cmd = [sys.executable, "-m", "pandaserve", "serve", "--bundle", str(bundle), "--port", str(port)]
    with log.open("ab") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    server = Server(f"http://127.0.0.1:{port}", proc, log)
    try:
        wait_ready(server.url, proc, log)
        yield server
    finally:
        stop(proc)


@contextmanager
def stock_engine(
    bundle: Path, log_dir: Path, port: int | None = None, extra_args: Sequence[str] = ()
) -> Iterator[Server]:
    """The stock vLLM OpenAI server for `bundle`, started with the command `pandaserve engine command`
    prints (and `extra_args`), ready (/health 200); stopped on exit. In a process group of its own: vLLM's engine core
    runs in children, and a test that kills the engine kills them all (`os.killpg`)."""
    port = port or free_port()
    printed = subprocess.run(
        [sys.executable, "-m", "pandaserve", "engine", "command", "--bundle", str(bundle), "--port", str(port)],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    words = shlex.split(printed)
    assignments = list(itertools.takewhile(lambda w: "=" in w and not w.startswith("-"), words))
    cmd = [sys.executable, *words[len(assignments) + 1 :], *extra_args]  # this Python for the printed `python3`
    env = {**os.environ, **dict(a.split("=", 1) for a in assignments)}
    log = log_dir / f"engine-{port}.log"
    with log.open("ab") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    engine = Server(f"http://127.0.0.1:{port}", proc, log, headers={})
    try:
        wait_ready(engine.url, proc, log, path="/health")
        yield engine
    finally:
        stop(proc)


@contextmanager
def encoder_service(bundle: Path, log_dir: Path, redis_url: str | None) -> Iterator[Server]:
    """`pandaserve encoders serve` on a free port (the embedding cache in Redis when given), ready."""
    port = free_port()
    env = {**os.environ, **BENCH_ENV}
    env.pop("REDIS_URL", None)
    if redis_url:
        env["REDIS_URL"] = redis_url
    log = log_dir / "encoders.log"
    cmd = [sys.executable, "-m", "pandaserve", "encoders", "serve", "--bundle", str(bundle), "--port", str(port)]
    with log.open("ab") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    server = Server(f"http://127.0.0.1:{port}", proc, log, headers={})
    try:
        wait_ready(server.url, proc, log)
        yield server
    finally:
        stop(proc)


@dataclass
class Router(Server):
    metrics_url: str = ""  # the router's Prometheus metrics (its own port)


@contextmanager
def vllm_router(engine_urls: list[str], log_dir: Path, port: int | None = None) -> Iterator[Router]:
    """vllm-router in front of `engine_urls`, started with the command `pandaserve engine router-command`
    prints, ready (/readiness 200: every engine is healthy to it); stopped on exit."""
    port, metrics_port = port or free_port(), free_port()
    urls = [arg for url in engine_urls for arg in ("--engine-url", url)]
    printed = subprocess.run(
        [sys.executable, "-m", "pandaserve", "engine", "router-command", *urls]
        + ["--port", str(port), "--metrics-port", str(metrics_port)],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    words = shlex.split(printed)
    cmd = [str(Path(sys.executable).with_name(words[0])), *words[1:]]  # this environment's vllm-router
    log = log_dir / f"router-{port}.log"
    with log.open("ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    router = Router(f"http://127.0.0.1:{port}", proc, log, {}, f"http://127.0.0.1:{metrics_port}")
    try:
        wait_ready(router.url, proc, log, path="/readiness")
        yield router
    finally:
        stop(proc)


def wait_ready(
    url: str,
    proc: subprocess.Popen[bytes],
    log: Path,
    timeout_s: float = START_TIMEOUT_S,
    path: str = "/readyz",
    status: int = 200,
) -> None:
    """Return once `path` answers `status` (200: ready; it needs no key); raise with the log's tail if
    the server exits first."""
    deadline = time.monotonic() + timeout_s
    with httpx.Client(timeout=5) as client:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited with {proc.returncode}:\n{log.read_text()[-5000:]}")
            try:
                if client.get(url + path).status_code == status:
                    return
            except httpx.TransportError:
                pass  # not listening yet: the lifespan is still starting the engine
            time.sleep(0.5)
    raise TimeoutError(f"server not ready after {timeout_s} s:\n{log.read_text()[-5000:]}")


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM (the server drains), then SIGKILL after 60 s."""
    proc.terminate()
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def rss_bytes(pid: int) -> int:
    """Resident set size of one process (VmRSS), 0 if it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


def children(pid: int) -> list[int]:
    """Every descendant of `pid` (vLLM's engine core is a child of the API process)."""
    out: list[int] = []
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            for child in (task / "children").read_text().split():
                out += [int(child), *children(int(child))]
    except (FileNotFoundError, ProcessLookupError):
        pass
    return out


_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of one live process (0 if it is gone)."""
    try:
        # Fields after the ")" that ends the command name: utime and stime are the 12th and 13th.
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / _TICK
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return 0.0


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine has been busy (every core, every process; /proc/stat minus idle and iowait)."""
    ticks = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    return (sum(ticks) - ticks[3] - ticks[4]) / _TICK


def cpu_split(pid: int) -> dict[str, float]:
    """CPU seconds so far of `pid` ("api") and of its live descendants together ("children": vLLM's engine
    core and worker, the encoder pool's decode workers)."""
    return {"api": cpu_seconds(pid), "children": sum(cpu_seconds(c) for c in children(pid))}


@dataclass
class RssSampler:
    """Samples the API process's RSS (and its children's sum, apart) every `interval_s` while running."""

    pid: int
    interval_s: float = 1.0
    samples: list[tuple[float, int, int]] = field(default_factory=list)  # (seconds, api bytes, children bytes)

    async def run(self, stop: asyncio.Event) -> None:
        t0 = time.perf_counter()
        while not stop.is_set():
            kids = sum(rss_bytes(c) for c in children(self.pid))
            self.samples.append((time.perf_counter() - t0, rss_bytes(self.pid), kids))
            with suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.interval_s)
