"""The function registry: functions, versions, aliases, code packages, reserved concurrency, tags.

Contract
--------
- A function has one mutable version, `$LATEST`, and immutable published versions numbered from 1
  (numbers are never reused while the function exists). Every change to a function or an alias
  mints a new `RevisionId`; a call that passes a `RevisionId` that is no longer current fails with
  `PreconditionFailed` and changes nothing.
- Lifecycle of `$LATEST` (the legal transitions are in `control/lifecycle.py`):

      create --> Pending --(package prepared)--> Active
                    \\--(preparation failed)----> Failed
      update (code or configuration) on Active: LastUpdateStatus InProgress --> Successful | Failed

  While a function is `Pending` or an update is `InProgress`, another update or a publish fails
  with `ResourceConflict`. Preparation runs in the background, owned by the registry's task group;
  a server that stops mid-way resumes it at the next start, so no function stays Pending forever.
- Code packages are stored content-addressed (`CodeSha256` = base64 SHA-256 of the zip) before
  the function record that references them is written, so a record never points to a missing zip.
- Every method either does all it says or raises an `ApiError` and changes nothing.
- All methods are safe to call concurrently.

Names: methods take a `FunctionRef` (already split from a name, partial or full ARN by
`firebox.arns`); qualifiers may be `$LATEST`, a version number or an alias name where AWS allows.
"""

from __future__ import annotations

import base64
import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from firebox.arns import FunctionRef


class State(enum.Enum):
    PENDING = "Pending"
    ACTIVE = "Active"
    FAILED = "Failed"


class UpdateStatus(enum.Enum):
    IN_PROGRESS = "InProgress"
    SUCCESSFUL = "Successful"
    FAILED = "Failed"


@dataclass(frozen=True)
class LoggingConfig:
    log_format: str = "Text"
    log_group: str | None = None  # None: the default `/aws/lambda/<name>`
    application_log_level: str | None = None
    system_log_level: str | None = None


@dataclass(frozen=True)
class FunctionVersion:
    """The whole configuration of one version of a function (`$LATEST` or a number)."""

    name: str
    version: str
    role: str
    runtime: str | None
    handler: str | None
    code_sha256: str
    code_size: int
    description: str = ""
    timeout: int = 3
    memory_size: int = 128
    ephemeral_storage: int = 512
    environment: Mapping[str, str] | None = None
    architectures: tuple[str, ...] = ("x86_64",)
    package_type: str = "Zip"
    tracing_mode: str = "PassThrough"
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    dead_letter_target_arn: str | None = None
    kms_key_arn: str | None = None
    state: State = State.PENDING
    state_reason: str | None = None
    state_reason_code: str | None = None
    last_update_status: UpdateStatus | None = None
    last_update_status_reason: str | None = None
    last_update_status_reason_code: str | None = None
    last_modified: str = ""
    revision_id: str = ""

    @property
    def code_sha256_hex(self) -> str:
        return base64.b64decode(self.code_sha256).hex()

    @property
    def busy(self) -> bool:
        """True while a change is being applied: no other change may start."""
        return self.state is State.PENDING or self.last_update_status is UpdateStatus.IN_PROGRESS


@dataclass(frozen=True)
class Alias:
    function_name: str
    name: str
    function_version: str
    description: str = ""
    # Another version and the share of invocations (0..1) it receives.
    additional_weights: Mapping[str, float] = field(default_factory=dict)
    revision_id: str = ""


@dataclass(frozen=True)
class FunctionDetails:
    """GetFunction: a version's configuration plus what the function as a whole carries."""

    config: FunctionVersion
    # The qualifier the caller used when it was an alias (the ARN then names the alias).
    alias: str | None
    tags: Mapping[str, str]
    reserved_concurrency: int | None


@dataclass(frozen=True)
class CodeInput:
    zip_file: bytes | None = None
    s3_bucket: str | None = None
    s3_key: str | None = None
    s3_object_version: str | None = None
    image_uri: str | None = None


@dataclass(frozen=True)
class CreateFunction:
    name: str
    role: str
    code: CodeInput
    runtime: str | None = None
    handler: str | None = None
    description: str = ""
    timeout: int = 3
    memory_size: int = 128
    ephemeral_storage: int = 512
    environment: Mapping[str, str] | None = None
    architectures: tuple[str, ...] = ("x86_64",)
    package_type: str = "Zip"
    tracing_mode: str = "PassThrough"
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    dead_letter_target_arn: str | None = None
    kms_key_arn: str | None = None
    tags: Mapping[str, str] = field(default_factory=dict)
    publish: bool = False
    layers: tuple[str, ...] = ()
    unsupported: tuple[str, ...] = ()  # parameters given that Firebox cannot honour (named in errors)


@dataclass(frozen=True)
class UpdateCode:
    ref: FunctionRef
    code: CodeInput
    architectures: tuple[str, ...] | None = None
    publish: bool = False
    dry_run: bool = False
    revision_id: str | None = None


@dataclass(frozen=True)
class UpdateConfiguration:
    ref: FunctionRef
    # Only the fields the caller gave: FunctionVersion field name -> new value.
    changes: Mapping[str, object]
    revision_id: str | None = None
    unsupported: tuple[str, ...] = ()


@dataclass(frozen=True)
class EventInvokeConfig:
    """Asynchronous invocation settings of one qualifier; None fields take Lambda's defaults
    (2 retries, 6 hours). Destinations are ARNs."""

    qualifier: str = "$LATEST"
    maximum_retry_attempts: int | None = None
    maximum_event_age_s: int | None = None
    on_success: str | None = None
    on_failure: str | None = None
    last_modified: float = 0.0


@dataclass(frozen=True)
class Page:
    items: tuple[object, ...]
    next_marker: str | None


@dataclass(frozen=True)
class AccountSettings:
    concurrent_executions: int
    unreserved_concurrent_executions: int
    total_code_size: int
    function_count: int


class Registry(Protocol):
    async def create_function(self, cmd: CreateFunction) -> FunctionVersion: ...
    async def get_function(self, ref: FunctionRef) -> FunctionDetails: ...
    async def get_configuration(self, ref: FunctionRef) -> tuple[FunctionVersion, str | None]:
        """The configuration and, when the qualifier was an alias, the alias name."""

    async def list_functions(self, *, all_versions: bool, marker: str | None, max_items: int) -> Page: ...
    async def update_code(self, cmd: UpdateCode) -> FunctionVersion: ...
    async def update_configuration(self, cmd: UpdateConfiguration) -> FunctionVersion: ...
    async def delete_function(self, ref: FunctionRef) -> None: ...
    async def code_blob(self, sha256_hex: str) -> bytes:
        """The exact zip bytes of a stored package; ResourceNotFound when unknown."""

    async def publish_version(
        self, ref: FunctionRef, *, code_sha256: str | None, description: str | None, revision_id: str | None
    ) -> FunctionVersion: ...
    async def list_versions(self, ref: FunctionRef, *, marker: str | None, max_items: int) -> Page: ...

    async def create_alias(
        self, ref: FunctionRef, name: str, version: str, description: str, weights: Mapping[str, float] | None
    ) -> Alias: ...
    async def get_alias(self, ref: FunctionRef, name: str) -> Alias: ...
    async def update_alias(
        self,
        ref: FunctionRef,
        name: str,
        *,
        version: str | None,
        description: str | None,
        weights: Mapping[str, float] | None,
        revision_id: str | None,
    ) -> Alias: ...
    async def delete_alias(self, ref: FunctionRef, name: str) -> None: ...
    async def list_aliases(
        self, ref: FunctionRef, *, version: str | None, marker: str | None, max_items: int
    ) -> Page: ...

    async def put_reserved_concurrency(self, ref: FunctionRef, value: int) -> int: ...
    async def get_reserved_concurrency(self, ref: FunctionRef) -> int | None: ...
    async def delete_reserved_concurrency(self, ref: FunctionRef) -> None: ...
    async def account_settings(self) -> AccountSettings: ...

    async def tag(self, ref: FunctionRef, tags: Mapping[str, str]) -> None: ...
    async def untag(self, ref: FunctionRef, keys: list[str]) -> None: ...
    async def list_tags(self, ref: FunctionRef) -> Mapping[str, str]: ...

    async def put_event_invoke_config(self, ref: FunctionRef, config: EventInvokeConfig, *, merge: bool) -> EventInvokeConfig:
        """Put replaces (merge=False); Update merges into an existing one (merge=True)."""

    async def get_event_invoke_config(self, ref: FunctionRef) -> EventInvokeConfig: ...
    async def delete_event_invoke_config(self, ref: FunctionRef) -> None: ...
    async def list_event_invoke_configs(self, ref: FunctionRef, *, marker: str | None, max_items: int) -> Page: ...
    async def find_event_invoke_config(self, ref: FunctionRef) -> EventInvokeConfig | None:
        """The configuration that applies to an event invoked as `ref` (None: defaults)."""

    async def start(self) -> None:
        """Start background work (preparation) and resume what a previous run left Pending."""

    async def stop(self) -> None:
        """Stop background work; idempotent."""
