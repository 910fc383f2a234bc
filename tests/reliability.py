"""RELIABILITY.md, regenerated from a real run: `python -m tests.reliability` runs the hostile corpus,
the fault suite and the schemathesis run (each writes its figures to build/reliability/*.json),
then renders the file; `--render` renders the figures of the last run without running anything."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from tests.hostile import CLASSES

REPO = Path(__file__).resolve().parents[1]
FIGURES = REPO / "build" / "reliability"
SUITES = ["tests/service/test_hostile.py", "tests/service/test_faults.py", "tests/service/test_schemathesis.py"]
COMMAND = "python -m tests.reliability"

# What the suites found and left open, by hand: a run can show a figure, not a judgement.
OPEN = """\
- **A form field over 1 MiB** (`message` on `/chat`) gets the form parser's own `400` ("Field exceeded
  maximum size of 1024KB"), which does not name the field.
- Protocol-level garbage (a bad Content-Length, a bare CR in a header, HTTP/0.9) is answered by
  uvicorn itself: a plain-text `400` or a closed connection, no error envelope.
"""


def run_suites() -> int:
    FIGURES.mkdir(parents=True, exist_ok=True)
    for stale in FIGURES.glob("*.json"):
        stale.unlink()
    return subprocess.call([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *SUITES], cwd=REPO)


def load(name: str) -> dict[str, Any] | None:
    path = FIGURES / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def mib(n: int) -> str:
    return f"{n / 2**20:,.0f} MiB"


def hostile_section(figures: dict[str, Any]) -> list[str]:
    cases = figures["cases"]
    by_kind: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for case in cases:
        by_kind[case["kind"]].append(case)
    statuses = [c["status"] for c in cases]
    timed = [c for c in cases if isinstance(c["status"], int)]
    slowest = max(timed, key=lambda c: c["seconds"])
    out = [
        "## Hostile corpus",
        "",
        f"`tests/hostile.py` generates {len(cases)} files and requests; `tests/service/test_hostile.py` sends",
        "each to one live server (the demo bundle, its own Redis, two API keys). Each must be answered",
        f"within {figures['time_bound_s']:g} s with a status its case accepts, a refusal naming the field at",
        "fault (`error.param`, or the message when there is no parameter, e.g. the API key), never a",
        "5xx but 503. A file within every limit that used to be costly must now be served in time (`200`).",
        "",
        "| class | what | cases | answers | slowest |",
        "|---|---|---|---|---|",
    ]
    for kind, what in CLASSES.items():
        group = by_kind.get(kind, [])
        answers = Counter(str(c["status"]) for c in group)
        shown = ", ".join(f"{s}: {n}" for s, n in sorted(answers.items()))
        slow = max((c["seconds"] for c in group), default=0)
        out.append(f"| {kind} | {what} | {len(group)} | {shown} | {slow:.2f} s |")
    server_errors = sum(isinstance(s, int) and s >= 500 and s != 503 for s in statuses)
    out += [
        "",
        f"- cases: **{len(cases)}**; 5xx other than 503: **{server_errors}**; hangs: "
        f"**{statuses.count('hang')}**; 0 in the answers is a connection the server closed (protocol garbage)",
        f"- slowest answer: **{slowest['seconds']:.2f} s** ({slowest['name']})",
        f"- server RSS: {mib(figures['rss_before'])} before the corpus, {mib(figures['rss_after'])} after "
        f"(+{mib(figures['rss_after'] - figures['rss_before'])}; bound +{mib(figures['rss_growth_bound'])}: the "
        "64 MiB embedding LRU plus allocator slack), peak over the server's life "
        f"**{mib(figures['rss_peak'])}** (VmHWM); `/readyz` 200 after it, the session it aimed at unchanged",
        "",
    ]
    return out


def faults_section(figures: dict[str, Any]) -> list[str]:
    out = [
        "## Faults",
        "",
        "`tests/service/test_faults.py`: one API (encoders in-process, so its decode workers are its",
        "children) on a Redis of its own, a stock vLLM server as its engine. After each fault: `/readyz`",
        "200 again without a restart, no session lock left beyond its lease (3 s here), every committed",
        "turn there exactly once, no unhandled error in the server's log, the conversation goes on, and",
        "no in-flight slot of the rate limiter counting past its deadline (5 s here).",
        "",
        "| fault | statuses of the turns it hit | seconds |",
        "|---|---|---|",
    ]
    for fault in figures["faults"]:
        out.append(f"| {fault['fault']} | {', '.join(map(str, fault['statuses']))} | {fault['seconds']} |")
    retries = figures["retries_after_recovery"]
    out += [
        "",
        f"- committed turns checked after every fault: {figures['committed_turns']} (none lost, none twice)",
        f"- turns retried once ready again (a 503 after recovery): {len(retries)} ({', '.join(retries) or 'none'})",
        "",
    ]
    return out


def schemathesis_section(figures: dict[str, Any]) -> list[str]:
    shown = ", ".join(f"{s}: {n}" for s, n in figures["statuses"].items())
    return [
        "## Property-based (schemathesis)",
        "",
        f"`tests/service/test_schemathesis.py` ({figures['run']} run): **{figures['cases']}** requests generated "
        f"from `openapi.yaml`, **{figures['server_errors']}** 5xx; answers {shown}. `make test` runs at least",
        "1,000; `pytest -m nightly tests/service/test_schemathesis.py` at least 10,000.",
        "",
    ]


def render() -> str:
    out = [
        "# Reliability",
        "",
        f"Regenerated by `{COMMAND}` (runs the three suites below, then writes this file from the",
        f"figures they leave in `build/reliability/`; `{COMMAND} --render` rewrites it from the last run).",
        "Every figure here comes from a real run of its suite (the last one that wrote it).",
        "",
    ]
    for name, section in (("hostile", hostile_section), ("faults", faults_section)):
        figures = load(name)
        out += section(figures) if figures else [f"## {name}", "", "(no figures: the suite did not finish)", ""]
    figures = load("schemathesis")
    out += schemathesis_section(figures) if figures else ["## schemathesis", "", "(no figures)", ""]
    out += ["## Still open", "", OPEN]
    return "\n".join(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--render", action="store_true", help="render the last run's figures only")
    args = parser.parse_args()
    status = 0 if args.render else run_suites()
    (REPO / "RELIABILITY.md").write_text(render())
    return status


if __name__ == "__main__":
    sys.exit(main())
