"""The Frontend Invoker: resolve, authorize, count, lease, invoke, release (see api.py)."""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import random
from collections.abc import Callable

from firebox import hops
from firebox.arns import LATEST, FunctionRef, Scope
from firebox.control.api import FunctionVersion, Registry, State
from firebox.counter.api import Counter
from firebox.errors import InvalidParameterValue, ResourceConflict
from firebox.invoker.api import InvocationType, InvokeRequest, InvokeResult
from firebox.workers.api import FunctionSpec, WorkerManager

_SPEC_CACHE_LIMIT = 4096
# Read once per invocation each: module globals, not class attributes.
_PENDING, _FAILED, _DRY_RUN = State.PENDING, State.FAILED, InvocationType.DRY_RUN


def function_spec(config: FunctionVersion, scope: Scope) -> FunctionSpec:
    """What a sandbox is made of; `key` changes exactly when a sandbox would behave differently."""
    environment = dict(config.environment or {})
    log_group = config.logging.log_group or f"/aws/lambda/{config.name}"
    identity = json.dumps(
        [config.name, config.version, config.code_sha256, config.runtime, config.handler, config.memory_size,
         config.timeout, config.ephemeral_storage, sorted(environment.items()), log_group,
         config.logging.log_format, config.logging.application_log_level, config.role],
    )
    return FunctionSpec(
        name=config.name,
        version=config.version,
        runtime=config.runtime or "",
        handler=config.handler or "",
        code_sha256_hex=config.code_sha256_hex,
        memory_mb=config.memory_size,
        timeout_s=config.timeout,
        ephemeral_storage_mb=config.ephemeral_storage,
        environment=environment,
        log_group=log_group,
        log_format=config.logging.log_format,
        application_log_level=config.logging.application_log_level,
        region=scope.region,
        account_id=scope.account_id,
        key=hashlib.sha256(identity.encode()).hexdigest()[:32],
    )


def decode_client_context(value: str | None) -> str | None:
    """X-Amz-Client-Context is base64 JSON; the runtime receives the JSON text."""
    if value is None:
        return None
    try:
        text = base64.b64decode(value, validate=True).decode()
        json.loads(text)
    except (binascii.Error, ValueError) as exc:
        raise InvalidParameterValue("Client context must be a valid Base64-encoded JSON object.") from exc
    return text


class LocalInvoker:
    def __init__(
        self,
        registry: Registry,
        counter: Counter,
        workers: WorkerManager,
        scope: Scope,
        *,
        choose: Callable[[], float] = random.random,
    ) -> None:
        self._registry = registry
        self._counter = counter
        self._workers = workers
        self._scope = scope
        self._choose = choose
        # FunctionSpec per (name, version, RevisionId): every change of a version gets a new
        # RevisionId, so a cached spec is never stale, and warm invokes skip hashing it again.
        self._specs: dict[tuple[str, str, str], FunctionSpec] = {}
        # The ARN each invoked FunctionRef is invoked as (the runtime's invoked_function_arn):
        # the same few refs over and over, and the scope never changes.
        self._arns: dict[FunctionRef, str] = {}
        self._callers_waiting = 0

    @property
    def callers_waiting(self) -> int:
        """Invocations in progress whose caller waits on the answer: all but queued events."""
        return self._callers_waiting

    async def _route(self, ref: FunctionRef) -> FunctionRef:
        """An alias with weights sends a share of invocations to its additional version."""
        qualifier = ref.qualifier
        if qualifier is None or qualifier == LATEST or qualifier.isdigit():
            return ref
        alias = await self._registry.get_alias(FunctionRef(ref.name), qualifier)
        target = alias.function_version
        roll = self._choose()
        for version, weight in alias.additional_weights.items():
            if roll < weight:
                target = version
                break
            roll -= weight
        return FunctionRef(ref.name, target)

    def _spec(self, config: FunctionVersion) -> FunctionSpec:
        key = (config.name, config.version, config.revision_id)
        spec = self._specs.get(key)
        if spec is None:
            if len(self._specs) >= _SPEC_CACHE_LIMIT:
                self._specs.clear()
            spec = self._specs[key] = function_spec(config, self._scope)
        return spec

    def _invoked_arn(self, ref: FunctionRef) -> str:
        if len(self._arns) >= _SPEC_CACHE_LIMIT:
            self._arns.clear()
        arn = self._arns[ref] = self._scope.function_arn(ref.name, ref.qualifier)
        return arn

    async def invoke(self, request: InvokeRequest) -> InvokeResult:
        # The request's fields in one unpacking: each read of a NamedTuple's field by name is a
        # descriptor call.
        ref, payload, request_id, invocation_type, tail_log, client_context, queued = request
        waits = not queued  # a queued event's caller is the dispatcher: nobody waits
        self._callers_waiting += waits
        try:
            if client_context is not None:
                client_context = decode_client_context(client_context)
            # (Only a qualifier may need routing: a bare name skips the coroutine of `_route`.)
            details = await self._registry.get_function(ref if ref.qualifier is None else await self._route(ref))
            config = details.config
            state = config.state
            if state is _PENDING:
                raise ResourceConflict(
                    "The operation cannot be performed at this time. The function is currently in the following state: Pending"
                )
            if state is _FAILED:
                raise ResourceConflict(
                    f"The function could not be invoked because it is in the Failed state: {config.state_reason}"
                )
            if invocation_type is _DRY_RUN:
                return InvokeResult(b"", config.version)
            # The spec cache inline (`_spec` on a miss): its key is the version's identity.
            spec = self._specs.get((config.name, config.version, config.revision_id)) or self._spec(config)
            hops.mark("resolved")
            counter, workers = self._counter, self._workers
            token = await counter.acquire_nowait(config.name, details.reserved_concurrency)
            hops.mark("counted")
            try:
                lease = await workers.lease(spec)
                hops.mark("leased")
                try:
                    outcome = await workers.invoke(
                        lease,
                        request_id=request_id,
                        payload=payload or b"{}",
                        invoked_arn=self._arns.get(ref) or self._invoked_arn(ref),
                        client_context=client_context,
                    )
                finally:
                    await workers.release(lease)
            finally:
                await counter.release(token)
            hops.mark("released")
            tail = base64.b64encode(outcome.log_tail).decode() if tail_log else None
            return InvokeResult(outcome.payload, config.version, outcome.function_error, tail)
        finally:
            self._callers_waiting -= waits
