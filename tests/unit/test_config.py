"""Settings: typed fields, one-line errors naming the variable, and no reading of the real environment."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import pytest

from agentd.cli import main
from agentd.config import (
    ConfigError,
    Settings,
    database_password,
    load_master_key,
    load_settings,
    service_secrets,
)

KEY = base64.urlsafe_b64encode(bytes(range(32))).decode()


def load(**env: str) -> Settings:
    return load_settings({f"AGENTD_{k.upper()}": v for k, v in env.items()})


def test_defaults_without_any_variable() -> None:
    s = load_settings({})
    assert s.providers == ("claude-code", "opencode", "codex")
    assert s.provider_limits == {} and s.claude_extra_args == () and s.database_url is None


def test_the_model_itself_never_reads_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENTD_WORKERS", "7")
    monkeypatch.setenv("AGENTD_PORT", "not a port")
    assert Settings().workers == 2 and Settings().port == 8080
    with pytest.raises(ConfigError, match="AGENTD_PORT"):
        load_settings(os.environ)  # only the loader reads it
    monkeypatch.delenv("AGENTD_PORT")
    assert load_settings(os.environ).workers == 7


def test_only_agentd_variables_are_read_and_unknown_ones_are_left_alone() -> None:
    s = load_settings(
        {"WORKERS": "9", "AGENTD_WORKERS": "3", "AGENTD_URL": "http://x", "AGENTD_NOT_A_FIELD": "1"}
    )
    assert s.workers == 3


def test_comma_lists() -> None:
    s = load(providers=" scripted , claude-code ,", opencode_env_passthrough="GITHUB_TOKEN,NPM_TOKEN")
    assert s.providers == ("scripted", "claude-code")
    assert s.opencode_env_passthrough == ("GITHUB_TOKEN", "NPM_TOKEN")


@pytest.mark.parametrize(("value", "fragment"), [("", "at least one provider"), ("a,b,a", "named twice")])
def test_bad_provider_lists(value: str, fragment: str) -> None:
    with pytest.raises(ConfigError, match=f"AGENTD_PROVIDERS: .*{fragment}"):
        load(providers=value)


def test_provider_limits_map() -> None:
    assert load(provider_limits="claude-code=4, opencode=2").provider_limits == {
        "claude-code": 4,
        "opencode": 2,
    }
    assert Settings(provider_limits={"x": 1}).provider_limits == {"x": 1}


@pytest.mark.parametrize("value", ["claude-code", "claude-code=four", "=3", "opencode=0", "a=1,b"])
def test_bad_provider_limits_fail_at_start_naming_the_variable(value: str) -> None:
    with pytest.raises(ConfigError) as e:
        load(provider_limits=value)
    msg = str(e.value)
    assert msg.startswith("AGENTD_PROVIDER_LIMITS: expected name=number") and "\n" not in msg


def test_extra_args_are_shell_words() -> None:
    s = load(claude_extra_args='--append-system-prompt "be brief" --verbose')
    assert s.claude_extra_args == ("--append-system-prompt", "be brief", "--verbose")
    assert load(claude_extra_args="'\"be brief\"'").claude_extra_args == ('"be brief"',)


def test_unbalanced_quotes_in_extra_args() -> None:
    with pytest.raises(ConfigError, match="AGENTD_CLAUDE_EXTRA_ARGS: cannot split"):
        load(claude_extra_args='--x "open')


def test_heartbeat_must_be_shorter_than_the_lease() -> None:
    assert load(heartbeat_s="5", lease_s="6").heartbeat_s == 5
    for hb in ("6", "7"):
        with pytest.raises(ConfigError, match=r"AGENTD_HEARTBEAT_S \(.*\) must be less than AGENTD_LEASE_S"):
            load(heartbeat_s=hb, lease_s="6")


@pytest.mark.parametrize(
    ("env", "fragment"),
    [
        ({"port": "eighty"}, "AGENTD_PORT: Input should be a valid integer"),
        ({"port": "70000"}, "AGENTD_PORT: Input should be less than or equal to 65535"),
        ({"workers": "0"}, "AGENTD_WORKERS: Input should be greater than or equal to 1"),
        ({"log_level": "loud"}, "AGENTD_LOG_LEVEL: use one of debug, info"),
        ({"log_format": "xml"}, "AGENTD_LOG_FORMAT: Input should be 'auto', 'json' or 'console'"),
        ({"claude_transport": "ssh"}, "AGENTD_CLAUDE_TRANSPORT"),
        ({"max_running": "-1"}, "AGENTD_MAX_RUNNING"),
        ({"sse_heartbeat_s": "0"}, "AGENTD_SSE_HEARTBEAT_S"),
    ],
)
def test_each_bad_value_names_its_variable(env: dict[str, str], fragment: str) -> None:
    with pytest.raises(ConfigError) as e:
        load(**env)
    assert fragment in str(e.value) and "\n" not in str(e.value)


def test_empty_optional_values_mean_unset() -> None:
    s = load(database_url="", max_running="", opencode_url=" ", master_key="", master_key_file="")
    assert s.database_url is None and s.max_running is None and s.opencode_url is None
    assert s.master_key is None and s.master_key_file is None


@pytest.mark.parametrize("empty", ["", " ", "\n"])
def test_an_api_key_set_but_empty_is_refused_saying_why(empty: str) -> None:
    # An empty key must never pass for "no key" (auth off) nor for a key: agentd refuses to start.
    with pytest.raises(ConfigError, match="AGENTD_API_KEY: is set but empty") as e:
        load(api_key=empty)
    assert "unset it" in str(e.value)
    assert load(opencode_password="").opencode_password is None


def test_limits_given_as_a_mapping_are_checked_too() -> None:
    with pytest.raises(ValueError, match=r"limits must be >= 1, got x=0"):
        Settings(provider_limits={"x": 0})


def test_secret_values_are_not_echoed_in_errors() -> None:
    with pytest.raises(ConfigError) as e:
        load(master_key="hunter2-but-longer")
    assert "AGENTD_MASTER_KEY: the value is not a master key: expected 32 bytes in url-safe base64" in str(
        e.value
    )
    assert "hunter2" not in str(e.value)


def test_master_key_inline_or_from_a_file(tmp_path: Path) -> None:
    raw = base64.urlsafe_b64decode(KEY)
    assert load_master_key(load(master_key=KEY)) == raw and len(raw) == 32
    assert load_master_key(load_settings({})) is None
    f = tmp_path / "key"
    f.write_text(KEY + "\n")
    assert load_master_key(load(master_key_file=str(f))) == raw
    with pytest.raises(ConfigError, match="not both"):
        load(master_key=KEY, master_key_file=str(f))
    f.write_text("short")
    with pytest.raises(
        ConfigError, match=r"AGENTD_MASTER_KEY_FILE: the key in .* is not a master key: expected 32 bytes"
    ):
        load_master_key(load(master_key_file=str(f)))
    with pytest.raises(ConfigError, match="AGENTD_MASTER_KEY_FILE: cannot read"):
        load_master_key(load(master_key_file=str(tmp_path / "missing")))


@pytest.mark.parametrize(
    ("dsn", "password"),
    [
        ("postgresql://agentd:pa55word-x@db:5432/agentd", "pa55word-x"),
        ("postgresql://agentd@db/agentd", None),
        ("host=db user=agentd password=pa55word-x dbname=agentd", "pa55word-x"),
        ("host=db password='with space\\'s' dbname=x", "with space's"),
        (None, None),
    ],
)
def test_database_password(dsn: str | None, password: str | None) -> None:
    assert database_password(dsn) == password


def test_service_secrets_are_the_long_enough_keys() -> None:
    s = Settings(
        api_key="api-key-123456",
        database_url="postgresql://u:database-pw@h/d",
        opencode_password="short",
    )
    assert service_secrets(s, base64.urlsafe_b64decode(KEY)) == {
        "AGENTD_API_KEY": "api-key-123456",
        "AGENTD_MASTER_KEY": KEY.rstrip("="),
        "AGENTD_DATABASE_PASSWORD": "database-pw",
    }


def test_service_secrets_include_credentials_from_agentds_environment() -> None:
    environ = {
        "ANTHROPIC_API_KEY": "sk-ant-1234567890",
        "CLAUDE_CODE_OAUTH_TOKEN": "oauth-token-abcdef",
        "OPENAI_API_KEY": "short",
        "PATH": "/usr/bin:/bin",
        "LANG": "C.UTF-8",
        "AGENTD_API_KEY": "not-from-here-123",
    }
    assert service_secrets(Settings(), None, environ) == {
        "ANTHROPIC_API_KEY": "sk-ant-1234567890",
        "CLAUDE_CODE_OAUTH_TOKEN": "oauth-token-abcdef",
    }


@pytest.mark.parametrize(
    ("env", "fragment"),
    [
        ({"AGENTD_PROVIDER_LIMITS": "claude-code"}, "agentd: AGENTD_PROVIDER_LIMITS: expected name=number"),
        ({"AGENTD_MASTER_KEY_FILE": "/nonexistent/key"}, "agentd: AGENTD_MASTER_KEY_FILE: cannot read"),
        ({"AGENTD_API_KEY": ""}, "agentd: AGENTD_API_KEY: is set but empty"),
    ],
)
def test_agentd_exits_2_with_one_line_and_no_traceback(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], env: dict[str, str], fragment: str
) -> None:
    for name in [n for n in os.environ if n.startswith("AGENTD_")]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr("agentd.logging.configure", lambda *a, **kw: None)  # keep the tests' logging
    assert main(["secrets", "list"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(fragment) and err.count("\n") == 1 and "Traceback" not in err, err
