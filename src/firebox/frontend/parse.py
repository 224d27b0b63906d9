"""Parse a rest-json request into the operation's input, validated as AWS validates it.

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
from collections.abc import Callable
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
    reader = _READERS.get((model.name, op.input_shape)) or _reader(model, op.input_shape)
    return reader.read(labels, query, headers, body)


# Where a member is read from. A payload member is the whole body: raw bytes (a blob) or JSON.
_URI, _QUERY, _HEADER, _BLOB, _DOCUMENT = "uri", "querystring", "header", "blob", "document"


class _InputReader:
    """One operation's input shape, worked out once: how each member is read off a request, and
    the validator compiled for the shape (`_checker`), so a request pays only for the members
    and constraints its operation has (the warm Invoke: 33.8k -> 12.4k instructions).

    `members` are in the model's order, which is the order of the params dict and so of the
    problems reported: (member, where, its name there (lower-case for headers), its shape's
    type, its shape's name)."""

    __slots__ = ("body_members", "check", "header_wires", "members", "model", "shape", "unconditional")

    def __init__(self, model: ServiceModel, input_shape: str) -> None:
        shape = model.shape(input_shape)
        payload_member = shape.get("payload")
        members: list[tuple[str, str, str, str, str]] = []
        body_members: dict[str, Shape] = {}
        for name, ref in shape.get("members", {}).items():
            location = ref.get("location")
            wire = ref.get("locationName", name)
            kind = model.shape(ref["shape"])["type"]
            if location == "uri":
                members.append((name, _URI, wire, kind, ref["shape"]))
            elif location == "querystring":
                members.append((name, _QUERY, wire, kind, ref["shape"]))
            elif location == "header":
                members.append((name, _HEADER, wire.lower(), kind, ref["shape"]))
            elif name == payload_member:
                members.append((name, _BLOB if kind == "blob" else _DOCUMENT, name, kind, ref["shape"]))
            else:
                body_members[name] = ref
        self.model = model
        self.shape = shape
        self.members = tuple(members)
        # A request that sends none of the header and query members (a warm Invoke sends none)
        # has only these to read: the same params, in the same order, for fewer steps.
        self.unconditional = tuple(m for m in members if m[1] not in (_HEADER, _QUERY))
        self.header_wires = frozenset(m[2] for m in members if m[1] == _HEADER)
        self.body_members = body_members if payload_member is None else {}
        self.check = _checker(model, input_shape)

    def read(self, labels: dict[str, str], query: dict[str, list[str]], headers: dict[str, str],
             body: bytes) -> dict[str, Any]:
        params: dict[str, Any] = {}
        problems: list[str] = []
        members = self.members if query or not headers.keys().isdisjoint(self.header_wires) else self.unconditional
        for name, location, wire, kind, shape_name in members:
            if location == _URI:
                if wire in labels:
                    value = labels[wire]
                    params[name] = unquote(value) if "%" in value else value  # unquote's own shortcut, sooner
            elif location == _HEADER:
                value = headers.get(wire)
                if value is not None:
                    params[name] = value if kind == "string" else _from_text(name, kind, [value], problems)
            elif location == _QUERY:
                if wire in query:
                    params[name] = _from_text(name, kind, query[wire], problems)
            elif location == _BLOB:
                params[name] = body
            elif body:
                params[name] = _convert(self.model, name, shape_name, _json(body), name)
        if self.body_members:
            params.update(_body(self.model, self.shape, self.body_members, body))
        if problems:
            raise ValidationError.of(problems)
        if self.check is not None:
            self.check(params, "", problems)
            if problems:
                raise ValidationError.of(problems)
        return params


_READERS: dict[tuple[str, str], _InputReader] = {}


def _reader(model: ServiceModel, input_shape: str) -> _InputReader:
    reader = _READERS[(model.name, input_shape)] = _InputReader(model, input_shape)
    return reader


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


def _from_text(name: str, kind: str, values: list[str], problems: list[str]) -> Any:
    """A query-string or header value -> the type `kind` (its shape's)."""
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


# --- validators, compiled once per shape ------------------------------------------------------
#
# `_checker(model, shape)` is a function (value, path, problems) that appends the shape's
# constraint problems of `value` at `path`, in the order AWS reports them; None when the shape
# has nothing to check. The value has the shape's type already (`_convert`, `_from_text`).

Checker = Callable[[Any, str, list[str]], None]

_CHECKERS: dict[tuple[str, str], Checker | None] = {}
_PASSED_KEPT = 4096  # string values remembered as valid, per string shape...
_PASSED_LONGEST = 256  # ...if no longer than this: names and qualifiers, not documents (memory stays small)


def _checker(model: ServiceModel, shape_name: str) -> Checker | None:
    key = (model.name, shape_name)
    if key in _CHECKERS:
        return _CHECKERS[key]
    # While it is built, a shape that (through its members) contains itself finds this stand-in.
    _CHECKERS[key] = lambda value, path, problems: _check_later(key, value, path, problems)
    shape = model.shape(shape_name)
    kind = shape["type"]
    check: Checker | None
    if kind == "structure":
        check = _structure_checker(model, shape)
    elif kind == "string":
        check = _string_checker(shape)
    elif kind in ("blob", "list", "map"):
        check = _collection_checker(model, shape)
    elif kind in ("integer", "long", "float", "double"):
        check = _number_checker(shape)
    else:  # boolean, timestamp: no constraints
        check = None
    _CHECKERS[key] = check
    return check


def _check_later(key: tuple[str, str], value: Any, path: str, problems: list[str]) -> None:
    check = _CHECKERS[key]
    if check is not None:
        check(value, path, problems)


def _structure_checker(model: ServiceModel, shape: Shape) -> Checker | None:
    required = tuple(shape.get("required", ()))
    members = {name: check for name, ref in shape.get("members", {}).items()
               if (check := _checker(model, ref["shape"])) is not None}
    if not required and not members:
        return None

    def check_structure(value: dict[str, Any], path: str, problems: list[str]) -> None:
        for name in required:
            if value.get(name) is None:
                _fail(problems, None, f"{path}.{name}" if path else name, "Member must not be null")
        for name, item in value.items():
            check = members.get(name)
            if check is not None and item is not None:
                check(item, f"{path}.{name}" if path else name, problems)

    return check_structure


def _length_checker(shape: Shape) -> Callable[[Any, str, list[str]], bool] | None:
    """The min/max length check of a string, blob, list or map; True when it found none."""
    low, high = shape.get("min"), shape.get("max")
    if low is None and high is None:
        return None

    def check_length(value: Any, path: str, problems: list[str]) -> bool:
        length = len(value)
        ok = True
        if low is not None and length < low:
            _fail(problems, value, path, f"Member must have length greater than or equal to {low}")
            ok = False
        if high is not None and length > high:
            _fail(problems, value, path, f"Member must have length less than or equal to {high}")
            ok = False
        return ok

    return check_length


def _string_checker(shape: Shape) -> Checker | None:
    check_length = _length_checker(shape)
    enum, pattern = shape.get("enum"), shape.get("pattern")
    if check_length is None and enum is None and pattern is None:
        return None
    enum_text = None if enum is None else f"Member must satisfy enum value set: [{', '.join(enum)}]"
    # A request names the same few functions and qualifiers over and over: a value that passed
    # is not matched again (a set look-up instead of the pattern: ~6k instructions per Invoke).
    passed: set[str] = set()

    def check_string(value: str, path: str, problems: list[str]) -> None:
        if value in passed:
            return
        ok = check_length is None or check_length(value, path, problems)
        if enum is not None and value not in enum:
            _fail(problems, value, path, enum_text)  # type: ignore[arg-type]
            ok = False
        elif pattern is not None and not _regex(pattern).fullmatch(value):  # compiled at first use, as before
            _fail(problems, value, path, f"Member must satisfy regular expression pattern: {pattern}")
            ok = False
        if ok and len(value) <= _PASSED_LONGEST:
            if len(passed) >= _PASSED_KEPT:
                passed.clear()
            passed.add(value)

    return check_string


def _collection_checker(model: ServiceModel, shape: Shape) -> Checker | None:
    check_length = _length_checker(shape)
    kind = shape["type"]
    check_item = _checker(model, shape["member"]["shape"]) if kind == "list" else None
    check_key = _checker(model, shape["key"]["shape"]) if kind == "map" else None
    check_value = _checker(model, shape["value"]["shape"]) if kind == "map" else None
    if check_length is None and check_item is None and check_key is None and check_value is None:
        return None

    def check_collection(value: Any, path: str, problems: list[str]) -> None:
        if check_length is not None:
            check_length(value, path, problems)
        if check_item is not None:
            for item in value:
                check_item(item, path, problems)
        elif check_key is not None or check_value is not None:
            for key, item in value.items():
                if check_key is not None:
                    check_key(key, path, problems)
                if check_value is not None:
                    check_value(item, path, problems)

    return check_collection


def _number_checker(shape: Shape) -> Checker | None:
    low, high = shape.get("min"), shape.get("max")
    if low is None and high is None:
        return None

    def check_number(value: float, path: str, problems: list[str]) -> None:
        if low is not None and value < low:
            _fail(problems, value, path, f"Member must have value greater than or equal to {low}")
        if high is not None and value > high:
            _fail(problems, value, path, f"Member must have value less than or equal to {high}")

    return check_number
