"""Property-based tests of the contract: schemathesis generates requests from openapi.yaml for every
operation and sends them to the live server; no response may be a 5xx or break the documented schema."""

from __future__ import annotations

from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance

from tests.conftest import AUTH, REPO

pytestmark = pytest.mark.e2e

EXAMPLES_PER_OPERATION = 60
MIN_CASES = 500  # across all operations, as CI requires
calls: list[str] = []


# The contract file itself (the server under test comes from the `server` fixture at call time).
schema = schemathesis.openapi.from_path(Path(REPO) / "openapi.yaml")


@schema.parametrize()
@settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_server_error_and_responses_match_the_contract(case: schemathesis.Case, server: str) -> None:
    calls.append(case.operation.label)
    case.call_and_validate(
        base_url=server, headers=AUTH, checks=[not_a_server_error, response_schema_conformance], timeout=120
    )


def test_enough_cases_ran() -> None:
    assert len(calls) >= MIN_CASES, f"only {len(calls)} generated requests"
