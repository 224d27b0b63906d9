"""The one exception tree of Firebox.

    FireboxError                      anything Firebox raises on purpose
    ├── ApiError                      becomes an AWS-shaped HTTP error (frontend/responses.py)
    │   ├── ValidationError           400 ValidationException: a value breaks the model's
    │   │                                 pattern, length, range or enum
    │   ├── InvalidParameterValue     400 InvalidParameterValueException: a value is well formed
    │   │                                 but wrong (runtime, zip, environment size...)
    │   ├── InvalidRequestContent     400 InvalidRequestContentException: the body is not the
    │   │                                 JSON the operation takes (syntax, types, unknown fields)
    │   ├── UnsupportedMediaType      415 UnsupportedMediaTypeException
    │   ├── RequestTooLarge           413 RequestTooLargeException: an invoke payload over its limit
    │   ├── RequestEntityTooLarge     413 RequestEntityTooLargeException: a request body over
    │   │                                 the API's limit (69,905,067 bytes)
    │   ├── ResourceNotFound          404 ResourceNotFoundException
    │   ├── ResourceConflict          409 ResourceConflictException: exists, or an update runs
    │   ├── PreconditionFailed        412 PreconditionFailedException: stale RevisionId
    │   ├── TooManyRequests           429 TooManyRequestsException (carries Reason, Retry-After)
    │   ├── UnknownOperation          404 UnknownOperationException: no such path / method
    │   ├── NotImplementedYet         501 NotImplementedException: a real Lambda operation that
    │   │                                 Firebox does not offer yet
    │   └── ServiceError              500 ServiceException: our fault
    └── StoreError                    the durable store failed; the frontend answers 500

Each API error carries the Lambda error code it is reported as. Components raise these; only
`frontend` turns them into responses. Foreign exceptions are translated at the boundary that
meets them, with `raise ... from exc`.
"""

from __future__ import annotations


class FireboxError(Exception):
    """Base of everything Firebox raises on purpose."""


class ApiError(FireboxError):
    code: str = "ServiceException"
    status: int = 500
    # AWS's body says "User" for caller mistakes and "Service" for its own failures.
    kind: str = "User"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def body(self) -> dict[str, object]:
        return {"Type": self.kind, "message": self.message}

    def headers(self) -> dict[str, str]:
        return {}


class ValidationError(ApiError):
    code, status = "ValidationException", 400

    @classmethod
    def of(cls, problems: list[str]) -> ValidationError:
        """AWS's wording: '1 validation error detected: Value ... ; Value ...'."""
        count = len(problems)
        noun = "validation error" if count == 1 else "validation errors"
        return cls(f"{count} {noun} detected: " + "; ".join(problems))


class InvalidParameterValue(ApiError):
    code, status = "InvalidParameterValueException", 400


class InvalidRequestContent(ApiError):
    code, status = "InvalidRequestContentException", 400


class UnsupportedMediaType(ApiError):
    code, status = "UnsupportedMediaTypeException", 415


class RequestTooLarge(ApiError):
    code, status = "RequestTooLargeException", 413


class RequestEntityTooLarge(ApiError):
    code, status = "RequestEntityTooLargeException", 413


class ResourceNotFound(ApiError):
    code, status = "ResourceNotFoundException", 404

    def body(self) -> dict[str, object]:
        # AWS spells this one's field with a capital M.
        return {"Type": self.kind, "Message": self.message}


class ResourceConflict(ApiError):
    code, status = "ResourceConflictException", 409


class PreconditionFailed(ApiError):
    code, status = "PreconditionFailedException", 412


class TooManyRequests(ApiError):
    code, status = "TooManyRequestsException", 429

    def __init__(self, reason: str, retry_after_s: int = 1, message: str = "Rate Exceeded.") -> None:
        super().__init__(message)
        self.reason = reason
        self.retry_after_s = retry_after_s

    def body(self) -> dict[str, object]:
        return {"Type": self.kind, "message": self.message, "Reason": self.reason}

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after_s)}


class UnknownOperation(ApiError):
    code, status = "UnknownOperationException", 404


class NotImplementedYet(ApiError):
    code, status = "NotImplementedException", 501


class ServiceError(ApiError):
    code, status, kind = "ServiceException", 500, "Service"


class StoreError(FireboxError):
    """The durable store could not do what was asked (disk full, corrupt database...)."""
