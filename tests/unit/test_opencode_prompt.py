"""What the OpenCode adapter sends and how it sets up processes: ids, prompt bodies, environment, argv."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from agentd.adapters.opencode import OpenCodeAgent, OpenCodeConfig
from agentd.adapters.opencode.cli_mode import build_argv
from agentd.adapters.opencode.prompt import new_id, prompt_body, session_title, split_model
from agentd.adapters.opencode.server import ServerConfig
from agentd.bootstrap import opencode_config
from agentd.config import Settings
from agentd.domain.models import AgentRequest, PromptFile


def test_ids_sort_like_opencodes_own() -> None:
    # msg_200805b33001… was created by OpenCode at 1795304741683 ms (captures/abort).
    assert new_id("msg", 1795304741683).startswith("msg_200805b33")
    ids = [new_id("msg") for _ in range(200)]
    assert ids == sorted(ids) and len(set(ids)) == 200
    assert all(len(i) == len("msg_") + 26 for i in ids)


def test_model_is_provider_slash_model() -> None:
    assert split_model("fake/fake-model") == {"providerID": "fake", "modelID": "fake-model"}
    assert split_model("openrouter/anthropic/claude") == {
        "providerID": "openrouter",
        "modelID": "anthropic/claude",
    }
    for bad in ("no-slash", "/x", "x/"):
        with pytest.raises(ValueError, match="<providerID>/<modelID>"):
            split_model(bad)


def test_prompt_body_parts(tmp_path: Path) -> None:
    body = prompt_body(
        "do it",
        directory=tmp_path,
        message_id="msg_1",
        model="p/m",
        agent="plan",
        files=[PromptFile(path="a.py"), PromptFile(content="hi", filename="n.md")],
        mentions=["explore"],
    )
    assert body["messageID"] == "msg_1" and body["agent"] == "plan"
    assert body["model"] == {"providerID": "p", "modelID": "m"}
    text, path, inline, agent = body["parts"]
    assert text == {"type": "text", "text": "do it"}
    assert path == {
        "type": "file",
        "mime": "text/x-python",
        "filename": "a.py",
        "url": (tmp_path / "a.py").as_uri(),
    }
    assert inline["url"] == "data:text/markdown;base64," + base64.b64encode(b"hi").decode()
    assert agent == {"type": "agent", "name": "explore"}
    assert "model" not in prompt_body("x", directory=tmp_path, message_id="msg_2")


def test_session_title() -> None:
    assert session_title("  fix\n the   bug ") == "fix the bug"
    assert len(session_title("x" * 500)) == 60


def test_managed_server_environment_is_private(tmp_path: Path) -> None:
    cfg = ServerConfig(
        binary="opencode",
        base_dir=tmp_path,
        environ={
            "PATH": "/bin",
            "HOME": "/root",
            "ANTHROPIC_API_KEY": "secret",
            "OPENCODE_CONFIG_CONTENT": "{}",
            "OPENCODE_DISABLE_AUTOUPDATE": "0",
            "OPENCODE_DISABLE_EMBEDDED_WEB_UI": "1",
            "OPENCODE_SERVER_PASSWORD": "theirs",
            "OPENAI_API_KEY": "sk-pass",
            "XDG_CONFIG_HOME": "/root/.config",
        },
        extra_env={"EXTRA": "1"},
        passthrough=("OPENAI_API_KEY",),
    )
    env = cfg.env()
    assert env["HOME"] == str(tmp_path / "home") and env["XDG_DATA_HOME"] == str(tmp_path / "data")
    assert env["XDG_CONFIG_HOME"] == str(tmp_path / "config")
    assert env["PATH"] == "/bin" and env["OPENCODE_CONFIG_CONTENT"] == "{}" and env["EXTRA"] == "1"
    assert env["OPENCODE_DISABLE_MODELS_FETCH"] == "1" and env["npm_config_registry"] == "http://127.0.0.1:9/"
    assert env["OPENCODE_DISABLE_AUTOUPDATE"] == "0"  # OPENCODE_* from agentd's environment win
    assert (
        env["OPENAI_API_KEY"] == "sk-pass"
        and "ANTHROPIC_API_KEY" not in env
        and "OPENCODE_DISABLE_EMBEDDED_WEB_UI" not in env
    )
    assert env["OPENCODE_SERVER_PASSWORD"] == cfg.password != "theirs" and len(cfg.password) >= 24


def test_cli_argv(tmp_path: Path) -> None:
    req = AgentRequest(
        project_id="p", prompt="-starts with a dash", model="p/m", agent="plan", session_id="ses_1"
    )
    argv = build_argv("opencode", req, tmp_path, [tmp_path / "f.txt"], ["explore"])
    assert argv[:3] == ["opencode", "run", "--format=json"]
    assert argv[-2:] == ["--", "-starts with a dash @explore"]
    for word in (
        "--session=ses_1",
        "--model=p/m",
        "--agent=plan",
        f"--dir={tmp_path}",
        f"--file={tmp_path}/f.txt",
    ):
        assert word in argv
    new = build_argv("opencode", AgentRequest(project_id="p", prompt="hello"), tmp_path, [], [])
    assert not any(w.startswith("--session") for w in new) and "--title=hello" in new


def test_cli_argv_keeps_hostile_values_attached_to_their_flag(tmp_path: Path) -> None:
    """A model (or agent, or title) that looks like an option must stay the value of its own flag."""
    req = AgentRequest(project_id="p", prompt="--dir=/etc", model="--dir=/etc", agent="--dir=/etc")
    argv = build_argv("opencode", req, tmp_path, [], [])
    options = argv[: argv.index("--")]
    assert "--model=--dir=/etc" in options and "--agent=--dir=/etc" in options
    assert "--title=--dir=/etc" in options
    assert [w for w in options if w.startswith("--dir")] == [f"--dir={tmp_path}"]
    assert argv[argv.index("--") + 1 :] == ["--dir=/etc"]  # the prompt, after the end of options


def test_settings_map_to_the_config(tmp_path: Path) -> None:
    s = Settings(
        data_dir=tmp_path,
        opencode_bin="/x/opencode",
        opencode_url="http://h:1",
        opencode_password="pw",
        opencode_mode="cli",
        opencode_idle_timeout_s=12,
    )
    cfg = opencode_config(s)
    assert (cfg.binary, cfg.url, cfg.password, cfg.mode, cfg.idle_timeout_s) == (
        "/x/opencode",
        "http://h:1",
        "pw",
        "cli",
        12,
    )
    assert cfg.workspace("p1") == s.workspace("p1")
    assert cfg.home("p1") == tmp_path / "homes" / "opencode" / "p1"


async def test_missing_binary_is_reported_with_what_to_do(tmp_path: Path) -> None:
    agent = OpenCodeAgent(
        OpenCodeConfig(data_dir=tmp_path, binary="/nonexistent/opencode", environ={"PATH": "/nx"})
    )
    try:
        avail = await agent.is_available()
        assert (
            not avail.available
            and "AGENTD_OPENCODE_BIN" in avail.detail
            and "AGENTD_OPENCODE_URL" in avail.detail
        )
        events = [e async for e in agent.execute(AgentRequest(project_id="p", prompt="hi"), run_id="r")]
        assert events[-1].event == "done" and events[-1].status == "failed"
        assert "not found" in (events[-1].error or "")
        assert await agent.cancel("r") is False
    finally:
        await agent.close()
