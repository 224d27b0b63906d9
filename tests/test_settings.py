"""Settings are read once from FIREBOX_* variables, with explicit overrides winning."""

from pathlib import Path

import pytest

from firebox.settings import Settings


def test_defaults_are_lambdas() -> None:
    settings = Settings.from_env({})
    assert (settings.account_id, settings.region) == ("000000000000", "us-east-1")
    assert settings.limits.account_concurrency == 1000
    assert settings.limits.min_unreserved_concurrency == 100
    assert settings.keep_alive_policy == "hybrid"


def test_environment_and_overrides() -> None:
    env = {"FIREBOX_PORT": "1234", "FIREBOX_REGION": "eu-west-1", "FIREBOX_ACCOUNT_CONCURRENCY": "50",
           "FIREBOX_DATA_DIR": "/tmp/x"}
    settings = Settings.from_env(env, port=4321)
    assert settings.port == 4321  # the flag wins
    assert settings.region == "eu-west-1"
    assert settings.data_dir == Path("/tmp/x")
    assert settings.limits.account_concurrency == 50
    assert settings.limits.min_unreserved_concurrency == 50
    assert Settings.from_env({"FIREBOX_LOG_LINGER_S": "0.5"}).log_linger_s == 0.5
    assert Settings().max_sandbox_lifetime_s == 7200  # Lambda: "every few hours"
    assert Settings.from_env({"FIREBOX_MAX_SANDBOX_LIFETIME_S": "0"}).max_sandbox_lifetime_s == 0


@pytest.mark.parametrize(
    "env",
    [
        {"FIREBOX_ACCOUNT_ID": "123"},
        {"FIREBOX_PORT": "70000"},
        {"FIREBOX_SANDBOX_BACKEND": "docker"},
        {"FIREBOX_KEEP_ALIVE_POLICY": "forever"},
        {"FIREBOX_ACCOUNT_CONCURRENCY": "0"},
        {"FIREBOX_TRACE_HOPS": "maybe"},
        {"FIREBOX_LOG_LINGER_S": "-1"},
        {"FIREBOX_LOG_LINGER_S": "1.5"},
        {"FIREBOX_MAX_SANDBOX_LIFETIME_S": "-1"},
        {"FIREBOX_MAX_SANDBOX_LIFETIME_S": "nan"},
    ],
)
def test_bad_values_are_refused(env: dict[str, str]) -> None:
    with pytest.raises(ValueError):
        Settings.from_env(env)


@pytest.mark.parametrize(("raw", "expected"), [("1", True), ("true", True), ("ON", True), ("0", False), ("no", False)])
def test_hop_tracing_is_a_flag(raw: str, expected: bool) -> None:
    assert Settings.from_env({"FIREBOX_TRACE_HOPS": raw}).trace_hops is expected
    assert Settings.from_env({}).trace_hops is False
