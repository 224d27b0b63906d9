"""Function names, qualifiers and ARNs, as AWS Lambda spells them.

A function may be named in any of four ways, each optionally followed by `:qualifier`:

    my-function                                              bare name
    my-function:prod                                         name with qualifier
    123456789012:function:my-function                        partial ARN
    arn:aws:lambda:us-east-1:123456789012:function:my-function[:3]   full ARN

`parse_function_name` reduces them all to a `FunctionRef(name, qualifier)`, checking that an ARN
names this endpoint's account and region. The frontend has validated the overall pattern already
(the service model's regular expression), so this module only splits and checks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from firebox.errors import InvalidParameterValue, ResourceNotFound

LATEST = "$LATEST"


@dataclass(frozen=True)
class Scope:
    """Where ARNs are minted: one account in one region."""

    account_id: str
    region: str

    def function_arn(self, name: str, qualifier: str | None = None) -> str:
        arn = f"arn:aws:lambda:{self.region}:{self.account_id}:function:{name}"
        return f"{arn}:{qualifier}" if qualifier else arn

    def role_arn(self, role: str) -> str:
        return f"arn:aws:iam::{self.account_id}:role/{role}"


class FunctionRef(NamedTuple):
    """(A NamedTuple, immutable like a frozen dataclass: made once or more per invocation, at half
    the cost.)"""

    name: str
    qualifier: str | None = None

    def with_qualifier(self, qualifier: str | None) -> FunctionRef:
        """Merge a `Qualifier` parameter with a qualifier spelled in the name, as AWS does."""
        if qualifier is None:
            return self
        if self.qualifier is not None and self.qualifier != qualifier:
            raise InvalidParameterValue(
                "The derived qualifier from the function name does not match the specified qualifier."
            )
        return FunctionRef(self.name, qualifier)


def parse_function_name(value: str, scope: Scope) -> FunctionRef:
    if ":" not in value and value != "arn":  # a bare name, the usual case: nothing to split
        return FunctionRef(value)
    parts = value.split(":")
    if parts[0] == "arn":
        # arn:aws:lambda:<region>:<account>:function:<name>[:<qualifier>]
        if len(parts) not in (7, 8) or parts[2] != "lambda" or parts[5] != "function":
            raise InvalidParameterValue(f"Invalid function ARN: {value}")
        _check_owner(value, region=parts[3], account=parts[4], scope=scope)
        return FunctionRef(parts[6], parts[7] if len(parts) == 8 else None)
    if len(parts) >= 3 and parts[1] == "function":
        # <account>:function:<name>[:<qualifier>]
        if len(parts) > 4:
            raise InvalidParameterValue(f"Invalid function name: {value}")
        _check_owner(value, region=scope.region, account=parts[0], scope=scope)
        return FunctionRef(parts[2], parts[3] if len(parts) == 4 else None)
    if len(parts) == 1:
        return FunctionRef(parts[0])
    if len(parts) == 2:
        return FunctionRef(parts[0], parts[1])
    raise InvalidParameterValue(f"Invalid function name: {value}")


def parse_function_arn(value: str, scope: Scope) -> FunctionRef:
    """A resource ARN (tags): only the full form is accepted."""
    if not value.startswith("arn:"):
        raise InvalidParameterValue(f"Invalid resource ARN: {value}")
    return parse_function_name(value, scope)


def _check_owner(value: str, *, region: str, account: str, scope: Scope) -> None:
    if region != scope.region:
        raise InvalidParameterValue(
            f"The region '{region}' in {value} does not match the endpoint's region '{scope.region}'."
        )
    if account != scope.account_id:
        # AWS answers a foreign account's function as not found (it is not visible to you).
        raise ResourceNotFound(f"Function not found: {value}")
