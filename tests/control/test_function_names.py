"""arns.parse_function_name against the plain version (split first, whatever the name) over many
names, partial and full ARNs, good and bad; FunctionRef as a value."""

from __future__ import annotations

import itertools

import pytest

from firebox.arns import FunctionRef, Scope, parse_function_name
from firebox.errors import ApiError, InvalidParameterValue

SCOPE = Scope("123456789012", "us-east-1")


def _plain(value: str, scope: Scope) -> FunctionRef:
    parts = value.split(":")
    if parts[0] == "arn":
        if len(parts) not in (7, 8) or parts[2] != "lambda" or parts[5] != "function":
            raise InvalidParameterValue(f"Invalid function ARN: {value}")
        if parts[3] != scope.region or parts[4] != scope.account_id:
            raise InvalidParameterValue("owner")
        return FunctionRef(parts[6], parts[7] if len(parts) == 8 else None)
    if len(parts) >= 3 and parts[1] == "function":
        if len(parts) > 4:
            raise InvalidParameterValue(f"Invalid function name: {value}")
        if parts[0] != scope.account_id:
            raise InvalidParameterValue("owner")
        return FunctionRef(parts[2], parts[3] if len(parts) == 4 else None)
    if len(parts) == 1:
        return FunctionRef(parts[0])
    if len(parts) == 2:
        return FunctionRef(parts[0], parts[1])
    raise InvalidParameterValue(f"Invalid function name: {value}")


PIECES = ["arn", "aws", "lambda", "us-east-1", "eu-west-1", "123456789012", "999999999999", "function", "f",
          "my-function", "$LATEST", "3", "prod", ""]


def _names() -> list[str]:
    names = ["", ":", "f", "arn", "function"]
    for n in range(1, 5):
        names += [":".join(p) for p in itertools.product(PIECES[:8] + ["f", "3"], repeat=n) if len(names) < 40_000]
    names += [f"arn:aws:lambda:{region}:{account}:function:{name}{qualifier}"
              for region in ("us-east-1", "eu-west-1") for account in ("123456789012", "999999999999")
              for name in ("f", "my-function") for qualifier in ("", ":3", ":$LATEST", ":prod", ":a:b")]
    names += [f"{account}:function:{name}{qualifier}" for account in ("123456789012", "999999999999")
              for name in ("f", "x") for qualifier in ("", ":3", ":prod", ":a:b")]
    return names


def test_parse_function_name_answers_as_the_plain_version() -> None:
    for value in _names():
        try:
            expected: FunctionRef | str = _plain(value, SCOPE)
        except ApiError:
            expected = "refused"
        try:
            got: FunctionRef | str = parse_function_name(value, SCOPE)
        except ApiError:
            got = "refused"
        assert got == expected, value
        if isinstance(got, FunctionRef):
            assert type(got.name) is str and (got.qualifier is None or type(got.qualifier) is str)


def test_a_function_ref_is_an_immutable_value() -> None:
    ref = FunctionRef("f")
    assert (ref.name, ref.qualifier) == ("f", None)
    assert ref == FunctionRef(name="f", qualifier=None) and hash(ref) == hash(FunctionRef("f"))
    assert ref != FunctionRef("f", "1") and {ref: 1}[FunctionRef("f")] == 1
    assert repr(FunctionRef("f", "1")) == "FunctionRef(name='f', qualifier='1')"
    assert ref.with_qualifier("2") == FunctionRef("f", "2") and ref.with_qualifier(None) is ref
    with pytest.raises(InvalidParameterValue):
        FunctionRef("f", "1").with_qualifier("2")
    with pytest.raises(AttributeError):
        ref.name = "g"  # type: ignore[misc]
