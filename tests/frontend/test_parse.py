"""`parse_input` answers exactly as the parser it replaced (`parse_reference.py`): the same params
(in the same order), or the same error with the same message, for every operation of both
models on many requests, valid and not: missing members, values too long or too short, pattern
and enum mismatches, numbers out of range, wrong JSON types, unknown fields, bad JSON, bad
base64, bad query and header values. Each request is parsed twice, since the compiled
validators remember string values that passed."""

from __future__ import annotations

import base64
import json
import random
from typing import Any

import pytest

from firebox.errors import ApiError
from firebox.frontend.model import Operation, ServiceModel, lambda_model, logs_model
from firebox.frontend.parse import parse_input

from . import parse_reference

_TEXTS = ["hello", "my-function", "hello:1", "hello:$LATEST", "arn:aws:lambda:us-east-1:123456789012:function:f",
          "123456789012:function:f:prod", "", " ", "bad name!", "x" * 65, "y" * 257, "ünïcødé", "a/b", "1", "-3",
          "10240", "true", "False", "Tail", "None", "Event", "RequestResponse", "DryRun", "$LATEST", "%41"]
_LABELS = ["hello", "hello%3A1", "%E2%9C%93", "", "x" * 300, "bad name!", "%", "my-function", "a%2Fb"]


def _outcome(parse: Any, model: ServiceModel, op: Operation, labels: dict[str, str],
             query: dict[str, list[str]], headers: dict[str, str], body: bytes) -> Any:
    try:
        return ("ok", list(parse(model, op, dict(labels), query, headers, body).items()))
    except ApiError as exc:
        return ("error", type(exc).__name__, str(exc))
    except Exception as exc:  # noqa: BLE001 - a crash must be the same crash
        return ("crash", type(exc).__name__)


def _sample(model: ServiceModel, shape_name: str, rng: random.Random, depth: int = 0) -> Any:
    """A JSON value for the shape: usually of its type, sometimes breaking a constraint or the type."""
    shape = model.shape(shape_name)
    kind = shape["type"]
    if rng.random() < 0.08:  # the wrong type
        return rng.choice([1, "text", True, [1], {"a": 1}, 1.5, None])
    if kind == "string":
        choices = list(_TEXTS)
        if "enum" in shape:
            choices += list(shape["enum"]) * 4
        if "max" in shape:
            choices.append("z" * (shape["max"] + 1))
        if "min" in shape and shape["min"] > 1:
            choices.append("z" * (shape["min"] - 1))
        return rng.choice(choices)
    if kind in ("integer", "long"):
        low, high = shape.get("min", 0), shape.get("max", 1000)
        return rng.choice([low, high, low - 1, high + 1, (low + high) // 2, 0])
    if kind in ("float", "double"):
        return rng.choice([0.5, -1.0, 1e9, shape.get("min", 0) - 0.5, 3])
    if kind == "boolean":
        return rng.choice([True, False])
    if kind == "timestamp":
        return rng.choice([1700000000, "2024-01-01T00:00:00Z", 1.5])
    if kind == "blob":
        return rng.choice([base64.b64encode(b"zip").decode(), "not base64!", ""])
    if kind == "list":
        count = rng.choice([0, 1, 2, 3, shape.get("max", 3) + 1 if shape.get("max", 99) < 20 else 3])
        return [_sample(model, shape["member"]["shape"], rng, depth + 1) for _ in range(count)] if depth < 4 else []
    if kind == "map":
        return {rng.choice(["k", "", "key" * 50, "Name"]) + str(i): _sample(model, shape["value"]["shape"], rng, depth + 1)
                for i in range(rng.choice([0, 1, 2]))} if depth < 4 else {}
    if kind == "structure":
        members = shape.get("members", {})
        names = [n for n in members if rng.random() < 0.6 and depth < 4]
        value = {n: _sample(model, members[n]["shape"], rng, depth + 1) for n in names}
        if rng.random() < 0.05:
            value["NotAMember"] = 1
        return value
    return None


def _text(model: ServiceModel, shape_name: str, rng: random.Random) -> list[str]:
    """Query-string values for the shape (a list member may repeat)."""
    kind = model.shape(shape_name)["type"]
    pool = _TEXTS + ["5", "0", "51", "abc", "1.5", "TRUE", "yes", "ALL"]
    if "enum" in model.shape(shape_name):
        pool = pool + list(model.shape(shape_name)["enum"]) * 3
    if kind == "list":
        return [rng.choice(pool) for _ in range(rng.choice([1, 2, 3]))]
    return [rng.choice(pool) for _ in range(rng.choice([1, 1, 2]))]


def _requests(model: ServiceModel, op: Operation, rng: random.Random, count: int) -> list[tuple[Any, ...]]:
    shape = model.shape(op.input_shape) if op.input_shape else {"members": {}}
    members = shape.get("members", {})
    payload = shape.get("payload")
    body_members = {n: r for n, r in members.items() if "location" not in r and n != payload}
    requests = []
    for _ in range(count):
        labels, query = {}, {}
        headers = {"host": "localhost:9000", "content-type": "application/json"}
        for name, ref in members.items():
            wire = ref.get("locationName", name)
            location = ref.get("location")
            if location == "uri" and rng.random() < 0.95:
                labels[wire] = rng.choice(_LABELS)
            elif location == "querystring" and rng.random() < 0.4:
                query[wire] = _text(model, ref["shape"], rng)
            elif location == "header" and rng.random() < 0.3:
                headers[wire.lower()] = _text(model, ref["shape"], rng)[0]
        if rng.random() < 0.1:
            query["Unrelated"] = ["1"]
        if payload is not None and model.shape(members[payload]["shape"])["type"] == "blob":
            body = rng.choice([b"", b"{}", b'{"key": "value"}', b"\xff\xfe", b"not json"])
        elif payload is not None:
            body = rng.choice([b"", json.dumps(_sample(model, members[payload]["shape"], rng)).encode(), b"{"])
        elif body_members:
            document = {n: _sample(model, r["shape"], rng) for n, r in body_members.items() if rng.random() < 0.6}
            body = rng.choice([json.dumps(document).encode()] * 6 + [b"", b"  ", b"[1]", b"{", b"null",
                                                                    b'{"Unknown": 1}', b"\xff"])
        else:
            body = rng.choice([b"", b"{}"])
        requests.append((labels, query, headers, body))
    return requests


def _operations() -> list[tuple[ServiceModel, Operation]]:
    return [(model, op) for model in (lambda_model(), logs_model()) for op in model.operations]


@pytest.mark.parametrize(("model", "op"), _operations(), ids=lambda x: getattr(x, "name", ""))
def test_every_operation_parses_as_before(model: ServiceModel, op: Operation) -> None:
    rng = random.Random(f"{model.name}.{op.name}")
    count = 400 if op.name in ("Invoke", "CreateFunction", "UpdateFunctionConfiguration", "PutLogEvents") else 40
    for request in _requests(model, op, rng, count):
        expected = _outcome(parse_reference.parse_input, model, op, *request)
        assert _outcome(parse_input, model, op, *request) == expected, request
        assert _outcome(parse_input, model, op, *request) == expected, request  # the second time


def test_the_warm_invoke() -> None:
    model = lambda_model()
    found = model.match("POST", "/2015-03-31/functions/hello/invocations", {})
    assert found is not None
    op, labels = found
    headers = {"host": "localhost:9000", "content-length": "2", "content-type": "application/json"}
    for _ in range(3):
        assert parse_input(model, op, labels, {}, headers, b"{}") == {"FunctionName": "hello", "Payload": b"{}"}
    with pytest.raises(ApiError, match="Value 'bad name!' at 'functionName' failed to satisfy constraint"):
        parse_input(model, op, {"FunctionName": "bad%20name!"}, {}, headers, b"{}")
    with pytest.raises(ApiError, match=r"2 validation errors detected: Value 'x' at 'invocationType' .*"
                                       r"Value 'y' at 'logType'"):
        parse_input(model, op, labels, {}, {**headers, "x-amz-invocation-type": "x", "x-amz-log-type": "y"}, b"")
