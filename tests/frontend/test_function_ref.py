"""`function_ref` remembers the names it parsed: it must answer exactly as `parse_function_name`
(+ `with_qualifier`) does, the first time and after, in each scope, and keep refusing what it
refuses."""

from __future__ import annotations

from typing import Any, cast

import pytest

from firebox.arns import FunctionRef, Scope, parse_function_name
from firebox.errors import ApiError
from firebox.frontend.api import Request, Services
from firebox.frontend.handlers import common
from firebox.frontend.handlers.common import function_ref

HOME = Scope("123456789012", "us-east-1")
ABROAD = Scope("123456789012", "eu-west-1")
NAMES = ["f", "f:prod", "f:$LATEST", "123456789012:function:f", "123456789012:function:f:2",
         "arn:aws:lambda:us-east-1:123456789012:function:f", "arn:aws:lambda:us-east-1:123456789012:function:f:3",
         "arn:aws:lambda:eu-west-1:123456789012:function:f", "arn:aws:lambda:us-east-1:999999999999:function:f",
         "a:b:c", "arn:aws:s3:::bucket", "999999999999:function:f"]


def _services(scope: Scope) -> Services:
    return Services(registry=cast(Any, None), invoker=cast(Any, None), events=cast(Any, None),
                    logs=cast(Any, None), scope=scope, limits=cast(Any, None))


def _outcome(call: Any) -> Any:
    try:
        return ("ok", call())
    except ApiError as exc:
        return ("error", type(exc).__name__, str(exc))


def _expected(name: str, scope: Scope, qualifier: str | None, merge: bool) -> Any:
    def parse() -> FunctionRef:
        ref = parse_function_name(name, scope)
        return ref.with_qualifier(qualifier) if merge else ref
    return _outcome(parse)


@pytest.mark.parametrize("merge", [True, False])
def test_as_parse_function_name_each_time_and_scope(merge: bool) -> None:
    common._REFS.clear()
    for _ in range(2):
        for scope in (HOME, ABROAD, Scope("123456789012", "us-east-1")):
            services = _services(scope)
            for name in NAMES:
                for qualifier in (None, "prod", "2", "$LATEST"):
                    params: dict[str, Any] = {"FunctionName": name}
                    if qualifier is not None:
                        params["Qualifier"] = qualifier
                    request = Request("Invoke", params, {}, "id", "http://localhost")
                    got = _outcome(lambda: function_ref(services, request, qualifier=merge))
                    assert got == _expected(name, scope, qualifier, merge), (name, scope, qualifier)


def test_it_forgets_when_full(monkeypatch: pytest.MonkeyPatch) -> None:
    common._REFS.clear()
    monkeypatch.setattr(common, "_REFS_KEPT", 3)
    services = _services(HOME)
    for i in range(10):
        request = Request("Invoke", {"FunctionName": f"f{i}"}, {}, "id", "http://localhost")
        assert function_ref(services, request) == FunctionRef(f"f{i}")
        assert len(common._REFS) <= 3
