"""The request parser as it was before its validators were compiled per shape (frontend/parse.py
at s16-base): the reference that `test_parse.py` holds the compiled one to.

Parse a rest-json request into the operation's input, validated as AWS validates it.

Two kinds of failure, worded as AWS words them:
  - the body is not the JSON the operation takes (syntax, a wrong type, an unknown field):
    `InvalidRequestContentException`, "Could not parse request body into json: ...";
  - a value breaks a constraint of the model (pattern, length, range, enum, required):
    `ValidationException`, "N validation error(s) detected: Value 'x' at 'memorySize' failed to
    satisfy constraint: Member must have value greater than or equal to 128; ...".
All constraint problems of one request are reported together, as AWS does.

The result is a plain dict keyed by the model's member names; handlers turn it into frozen
command objects.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass
from functools import cache
from typing import Any
from urllib.parse import unquote

from firebox.errors import InvalidRequestContent, ValidationError
from firebox.frontend.model import Operation, ServiceModel, Shape

_PARSE = "Could not parse request body into json: Could not parse payload into json: "


def parse_input(
    model: ServiceModel,
    op: Operation,
    labels: dict[str, str],
    query: dict[str, list[str]],
    headers: dict[str, str],
    body: bytes,
) -> dict[str, Any]:
    if op.input_shape is None:
        return {}
    plan = _plan(model, op.input_shape)
    shape = plan.shape
    params: dict[str, Any] = {}
    problems: list[str] = []
    for name, location, wire, target, shape_name in plan.members:
        if location == "uri":
            if wire in labels:
                params[name] = unquote(labels[wire])
        elif location == "querystring":
            if wire in query:
                params[name] = _from_text(name, target, query[wire], problems)
        elif location == "header":
            value = headers.get(wire)
            if value is not None:
                params[name] = _from_text(name, target, [value], problems)
        elif target["type"] == "blob":  # the payload member
            params[name] = body
        elif body:
            params[name] = _convert(model, name, shape_name, _json(body), name)
    if plan.body_members:
        params.update(_body(model, shape, plan.body_members, body))
    if problems:
        raise ValidationError.of(problems)
    _validate_structure(model, shape, params, "", problems)
    if problems:
        raise ValidationError.of(problems)
    return params


@dataclass(frozen=True)
class _Plan:
    """How an input shape's members are read off a request, worked out once per operation:
    (member, where: uri / querystring / header / payload, its name there, lower-cased for
    headers, its target shape, that shape's name), and the members of a JSON body."""

    shape: Shape
    members: tuple[tuple[str, str, str, Shape, str], ...]
    body_members: dict[str, Shape]


_PLANS: dict[tuple[str, str], _Plan] = {}


def _plan(model: ServiceModel, input_shape: str) -> _Plan:
    plan = _PLANS.get((model.name, input_shape))
    if plan is not None:
        return plan
    shape = model.shape(input_shape)
    payload_member = shape.get("payload")
    members: list[tuple[str, str, str, Shape, str]] = []
    body_members: dict[str, Shape] = {}
    for name, ref in shape.get("members", {}).items():
        location = ref.get("location")
        wire = ref.get("locationName", name)
        target = model.shape(ref["shape"])
        if location in ("uri", "querystring"):
            members.append((name, location, wire, target, ref["shape"]))
        elif location == "header":
            members.append((name, location, wire.lower(), target, ref["shape"]))
        elif name == payload_member:
            members.append((name, "payload", name, target, ref["shape"]))
        else:
            body_members[name] = ref
    plan = _PLANS[(model.name, input_shape)] = _Plan(
        shape, tuple(members), body_members if payload_member is None else {})
    return plan


def _json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidRequestContent(f"{_PARSE}{exc}") from exc


def _body(model: ServiceModel, shape: Shape, members: dict[str, Shape], body: bytes) -> dict[str, Any]:
    if not body.strip():
        return {}
    document = _json(body)
    if not isinstance(document, dict):
        raise InvalidRequestContent(f"{_PARSE}the request body must be a JSON object")
    result: dict[str, Any] = {}
    for key, value in document.items():
        if key not in members:
            raise InvalidRequestContent(f'{_PARSE}Unrecognized field "{key}", not marked as ignorable')
        if value is None:
            continue
        result[key] = _convert(model, key, members[key]["shape"], value, key)
    return result


def _type_error(path: str, expected: str, value: Any) -> InvalidRequestContent:
    found = type(value).__name__.replace("str", "String").replace("dict", "Object").replace("list", "Array")
    return InvalidRequestContent(
        f"{_PARSE}Cannot deserialize value of type `{expected}` from {found} at '{path}'"
    )


def _convert(model: ServiceModel, name: str, shape_name: str, value: Any, path: str) -> Any:
    """JSON value -> Python value of the shape's type; rejects wrong types and unknown fields."""
    shape = model.shape(shape_name)
    kind = shape["type"]
    if kind == "structure":
        if not isinstance(value, dict):
            raise _type_error(path, "structure", value)
        members = shape.get("members", {})
        out: dict[str, Any] = {}
        for key, item in value.items():
            if key not in members:
                raise InvalidRequestContent(f'{_PARSE}Unrecognized field "{key}" at \'{path}\', not marked as ignorable')
            if item is not None:
                out[key] = _convert(model, key, members[key]["shape"], item, f"{path}.{key}")
        return out
    if kind == "list":
        if not isinstance(value, list):
            raise _type_error(path, "list", value)
        return [_convert(model, name, shape["member"]["shape"], v, f"{path}[{i}]") for i, v in enumerate(value)]
    if kind == "map":
        if not isinstance(value, dict):
            raise _type_error(path, "map", value)
        return {
            str(k): _convert(model, name, shape["value"]["shape"], v, f"{path}.{k}") for k, v in value.items()
        }
    if kind == "string":
        if not isinstance(value, str):
            raise _type_error(path, "string", value)
        return value
    if kind in ("integer", "long"):
        if isinstance(value, bool) or not isinstance(value, int):
            raise _type_error(path, "int", value)
        return value
    if kind in ("float", "double"):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _type_error(path, "double", value)
        return float(value)
    if kind == "boolean":
        if not isinstance(value, bool):
            raise _type_error(path, "boolean", value)
        return value
    if kind == "blob":
        if not isinstance(value, str):
            raise _type_error(path, "blob", value)
        try:
            return base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise InvalidRequestContent(f"{_PARSE}Illegal base64 content at '{path}'") from exc
    if kind == "timestamp":
        if not isinstance(value, (int, float, str)) or isinstance(value, bool):
            raise _type_error(path, "timestamp", value)
        return value
    return value


def _from_text(name: str, shape: Shape, values: list[str], problems: list[str]) -> Any:
    """A query-string or header value -> the shape's type."""
    kind = shape["type"]
    if kind == "list":
        return list(values)
    text = values[0]
    if kind in ("integer", "long"):
        if re.fullmatch(r"-?\d+", text):
            return int(text)
        problems.append(f"Value '{text}' at '{_camel(name)}' failed to satisfy constraint: Member must be a number")
        return None
    if kind == "boolean":
        if text.lower() in ("true", "false"):
            return text.lower() == "true"
        problems.append(f"Value '{text}' at '{_camel(name)}' failed to satisfy constraint: Member must be a boolean")
        return None
    return text


def _camel(path: str) -> str:
    return ".".join(p[:1].lower() + p[1:] for p in path.split("."))


# Java's Unicode property classes, which the service models use inside character classes, in
# Python's `re` terms: letters and numbers are word characters, separators are white space.
_JAVA_CLASSES = {r"\p{L}": r"\w", r"\p{N}": r"\w", r"\p{Z}": r"\s"}


@cache
def _regex(pattern: str) -> re.Pattern[str]:
    for java, python in _JAVA_CLASSES.items():
        pattern = pattern.replace(java, python)
    return re.compile(pattern)


def _show(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"'{str(value).lower()}'"
    if isinstance(value, bytes):
        return "'<binary>'"
    if isinstance(value, (dict, list)):
        return f"'{json.dumps(value, separators=(',', ':'))}'"
    return f"'{value}'"


def _fail(problems: list[str], value: Any, path: str, constraint: str) -> None:
    problems.append(f"Value {_show(value)} at '{_camel(path)}' failed to satisfy constraint: {constraint}")


def _validate_structure(model: ServiceModel, shape: Shape, value: dict[str, Any], path: str, problems: list[str]) -> None:
    members = shape.get("members", {})
    for required in shape.get("required", []):
        if value.get(required) is None:
            _fail(problems, None, _join(path, required), "Member must not be null")
    for key, item in value.items():
        if key in members and item is not None:
            _validate(model, members[key]["shape"], item, _join(path, key), problems)


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _validate(model: ServiceModel, shape_name: str, value: Any, path: str, problems: list[str]) -> None:
    shape = model.shape(shape_name)
    kind = shape["type"]
    if kind == "structure":
        _validate_structure(model, shape, value, path, problems)
        return
    if kind in ("string", "blob", "list", "map"):
        length = len(value)
        if "min" in shape and length < shape["min"]:
            _fail(problems, value, path, f"Member must have length greater than or equal to {shape['min']}")
        if "max" in shape and length > shape["max"]:
            _fail(problems, value, path, f"Member must have length less than or equal to {shape['max']}")
    if kind == "string":
        if "enum" in shape and value not in shape["enum"]:
            _fail(problems, value, path, f"Member must satisfy enum value set: [{', '.join(shape['enum'])}]")
        elif "pattern" in shape and not _regex(shape["pattern"]).fullmatch(value):
            _fail(problems, value, path, f"Member must satisfy regular expression pattern: {shape['pattern']}")
    elif kind in ("integer", "long", "float", "double"):
        if "min" in shape and value < shape["min"]:
            _fail(problems, value, path, f"Member must have value greater than or equal to {shape['min']}")
        if "max" in shape and value > shape["max"]:
            _fail(problems, value, path, f"Member must have value less than or equal to {shape['max']}")
    elif kind == "list":
        for item in value:
            _validate(model, shape["member"]["shape"], item, path, problems)
    elif kind == "map":
        for key, item in value.items():
            _validate(model, shape["key"]["shape"], key, path, problems)
            _validate(model, shape["value"]["shape"], item, path, problems)
