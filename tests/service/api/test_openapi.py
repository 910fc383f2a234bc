"""openapi.yaml at the repository root is the contract: it must equal what the app serves."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.api.openapi import render

pytestmark = pytest.mark.unit

SPEC = Path(__file__).resolve().parents[3] / "openapi.yaml"


def test_openapi_yaml_equals_the_app() -> None:
    assert SPEC.read_text() == render(), "openapi.yaml is stale: run `make openapi`"
