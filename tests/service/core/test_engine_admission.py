"""Engine admission: the totals bound every turn, and each tenant holds at most its share of them."""

from __future__ import annotations

import pytest

from service.core.engine_admission import EngineAdmission
from service.errors import Overloaded

pytestmark = pytest.mark.unit


def refused(admission: EngineAdmission, tenant: str | None, prompt_tokens: int) -> str:
    """The reason `admission` refuses this turn (it must)."""
    with pytest.raises(Overloaded) as info, admission.admit(tenant, prompt_tokens):
        pass
    return str(info.value)


def test_a_tenant_at_its_share_of_turns_is_refused_while_another_gets_in() -> None:
    admission = EngineAdmission(max_requests=4, max_queued_prompt_tokens=1_000, tenant_share=0.5)
    with admission.admit("a", 10), admission.admit("a", 10):
        assert "this API key's share of the engine is in use" in refused(admission, "a", 10)
        with admission.admit("b", 10), admission.admit("b", 10):
            assert "at capacity" in refused(admission, "c", 10)  # the totals, whoever asks
    assert (admission.requests, admission.queued_prompt_tokens) == (0, 0)
    assert not admission.requests_by and not admission.tokens_by  # nothing left counted


def test_a_tenant_at_its_share_of_queued_prompt_tokens_is_refused_until_prefilled() -> None:
    admission = EngineAdmission(max_requests=10, max_queued_prompt_tokens=1_000, tenant_share=0.5)
    with admission.admit("a", 400) as first:
        assert "share" in refused(admission, "a", 200)
        with admission.admit("b", 500):
            pass
        first.prefilled()  # its prompt is in the engine: no longer queued
        with admission.admit("a", 500):
            pass


def test_a_prompt_over_the_share_still_runs_alone() -> None:
    admission = EngineAdmission(max_requests=10, max_queued_prompt_tokens=1_000, tenant_share=0.5)
    with admission.admit("a", 900):  # over key a's 500: it could never run otherwise
        assert admission.tokens_by["a"] == 900


def test_without_auth_only_the_totals_apply() -> None:
    admission = EngineAdmission(max_requests=2, max_queued_prompt_tokens=1_000, tenant_share=0.5)
    with admission.admit(None, 10), admission.admit(None, 10):
        assert "at capacity" in refused(admission, None, 10)
