"""InvokeRequest and InvokeResult (invoker/api.py): immutable values built by position or by
keyword, with the defaults of the contract."""

from __future__ import annotations

import pytest

from firebox.arns import FunctionRef
from firebox.invoker.api import InvocationType, InvokeRequest, InvokeResult


def test_a_request_by_keyword_and_by_position_with_its_defaults() -> None:
    ref = FunctionRef("f", "3")
    by_keyword = InvokeRequest(ref=ref, payload=b"{}", request_id="r-1")
    assert (by_keyword.ref, by_keyword.payload, by_keyword.request_id) == (ref, b"{}", "r-1")
    assert by_keyword.invocation_type is InvocationType.REQUEST_RESPONSE
    assert (by_keyword.tail_log, by_keyword.client_context, by_keyword.queued) == (False, None, False)
    by_position = InvokeRequest(ref, b"{}", "r-1", InvocationType.DRY_RUN, True, "e30=", queued=True)
    assert (by_position.invocation_type, by_position.tail_log, by_position.client_context, by_position.queued) == (
        InvocationType.DRY_RUN, True, "e30=", True)
    assert by_keyword == InvokeRequest(ref, b"{}", "r-1")
    with pytest.raises(AttributeError):
        by_keyword.payload = b"[]"  # type: ignore[misc]
    with pytest.raises(TypeError):
        InvokeRequest(ref, b"{}")  # type: ignore[call-arg]


def test_a_result_with_its_defaults() -> None:
    result = InvokeResult(b"1", "$LATEST")
    assert (result.payload, result.executed_version, result.function_error, result.log_tail) == (
        b"1", "$LATEST", None, None)
    failed = InvokeResult(b"{}", "2", "Unhandled", log_tail="U1RBUlQ=")
    assert (failed.function_error, failed.log_tail) == ("Unhandled", "U1RBUlQ=")
    assert failed != result
    with pytest.raises(AttributeError):
        result.function_error = "Unhandled"  # type: ignore[misc]
