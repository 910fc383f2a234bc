"""Property-based tests of the contract: schemathesis generates requests from openapi.yaml for every
operation and sends them to the live server; no response may be a 5xx or break the documented schema.

`make test` runs at least 1,000 generated requests; the `nightly` marker (deselected by default:
`pytest -m nightly tests/service/test_schemathesis.py`) runs at least 10,000. Four operations take
no input (/healthz, /readyz, /metrics, /v1/models), so Hypothesis sends each of them once: the
other seven carry the count."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance

from tests.conftest import AUTH, REPO

pytestmark = pytest.mark.e2e

EXAMPLES_PER_OPERATION = 150  # 1,801 cases measured (its phases add examples): ~30 s of requests on 2 cores
MIN_CASES = 1_000  # across all operations, as CI requires
NIGHTLY_EXAMPLES_PER_OPERATION = 1_500
NIGHTLY_MIN_CASES = 10_000
REPORT = REPO / "build" / "reliability" / "schemathesis.json"
calls: dict[str, list[tuple[str, int]]] = {"test": [], "nightly": []}


# The contract file itself (the server under test comes from the `server` fixture at call time).
schema = schemathesis.openapi.from_path(Path(REPO) / "openapi.yaml")


def call(case: schemathesis.Case, server: str, run: str) -> None:
    response = case.call(base_url=server, headers=AUTH, timeout=120)
    calls[run].append((case.operation.label, response.status_code))
    case.validate_response(response, checks=[not_a_server_error, response_schema_conformance])


@schema.parametrize()
@settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_server_error_and_responses_match_the_contract(case: schemathesis.Case, server: str) -> None:
    call(case, server, "test")


@pytest.mark.nightly
@schema.parametrize()
@settings(max_examples=NIGHTLY_EXAMPLES_PER_OPERATION, deadline=None, suppress_health_check=list(HealthCheck))
def test_nightly_no_server_error_and_responses_match_the_contract(case: schemathesis.Case, server: str) -> None:
    call(case, server, "nightly")


def report(run: str) -> None:
    statuses = [status for _, status in calls[run]]
    by_operation: dict[str, int] = {}
    for label, _ in calls[run]:
        by_operation[label] = by_operation.get(label, 0) + 1
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    REPORT.write_text(
        json.dumps(
            {
                "run": run,
                "cases": len(statuses),
                "server_errors": sum(s >= 500 for s in statuses),
                "statuses": {str(s): statuses.count(s) for s in sorted(set(statuses))},
                "by_operation": by_operation,
            },
            indent=1,
        )
    )


def test_enough_cases_ran() -> None:
    report("test")
    assert len(calls["test"]) >= MIN_CASES, f"only {len(calls['test'])} generated requests"


@pytest.mark.nightly
def test_nightly_enough_cases_ran() -> None:
    report("nightly")
    assert len(calls["nightly"]) >= NIGHTLY_MIN_CASES, f"only {len(calls['nightly'])} generated requests"
