"""ServiceModel.match answers from its route cache exactly as by trying the operations' patterns:
the same operation and labels, a query key a route fixes still telling routes apart, and the
caller free to change the labels it got."""

from __future__ import annotations

import pytest

from firebox.frontend.model import lambda_model

INVOKE = "/2015-03-31/functions/f/invocations"


@pytest.mark.parametrize(("method", "path", "query", "expected"), [
    ("POST", INVOKE, {}, "Invoke"),
    ("POST", INVOKE + "/", {}, "Invoke"),
    ("POST", INVOKE, {"Qualifier": ["1"]}, "Invoke"),
    ("GET", "/2015-03-31/functions/f/versions", {}, "ListVersionsByFunction"),
    ("GET", "/2019-09-30/functions/f/provisioned-concurrency", {"List": ["ALL"]},
     "ListProvisionedConcurrencyConfigs"),
    ("GET", "/2019-09-30/functions/f/provisioned-concurrency", {}, "GetProvisionedConcurrencyConfig"),
    ("DELETE", INVOKE, {}, None),
])
def test_a_cached_route_is_the_route(method: str, path: str, query: dict[str, list[str]],
                                     expected: str | None) -> None:
    model = lambda_model()
    first, again = model.match(method, path, query), model.match(method, path, query)
    assert first == model._match(method, path, query) == again
    assert (first[0].name if first else None) == expected


def test_the_labels_are_the_callers() -> None:
    model = lambda_model()
    found = model.match("POST", INVOKE, {})
    assert found is not None
    found[1]["FunctionName"] = "changed"
    again = model.match("POST", INVOKE, {})
    assert again is not None and again[1] == {"FunctionName": "f"}


def test_the_cache_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    import firebox.frontend.model as model_module

    monkeypatch.setattr(model_module, "_ROUTES_KEPT", 10)
    model = lambda_model()
    model._routes.clear()
    for n in range(25):
        assert model.match("POST", f"/2015-03-31/functions/f{n}/invocations", {}) is not None
        assert len(model._routes) <= 10
