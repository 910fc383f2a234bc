"""JSON log lines carry the request id of the request that wrote them."""

from __future__ import annotations

import json
import logging

import pytest

from service.logs import JsonFormatter, request_id

pytestmark = pytest.mark.unit


def test_json_lines_carry_the_request_id() -> None:
    record = logging.LogRecord("pandaserve", logging.WARNING, __file__, 1, "turn %s failed", ("t1",), None)
    token = request_id.set("req-42")
    try:
        line = json.loads(JsonFormatter().format(record))
    finally:
        request_id.reset(token)
    assert line["message"] == "turn t1 failed" and line["level"] == "WARNING" and line["request_id"] == "req-42"
    assert json.loads(JsonFormatter().format(record))["request_id"] is None  # outside a request
