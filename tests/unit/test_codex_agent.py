"""The Codex adapter's command line, environment and binary lookup (no process started)."""

from __future__ import annotations

import os
from pathlib import Path

from agentd.adapters.codex.agent import CodexAgent, CodexConfig, native_binary, with_files
from agentd.domain.models import AgentRequest, PromptFile


def agent(tmp_path: Path, **kw: object) -> CodexAgent:
    environ = {
        "PATH": "/usr/bin:/bin",
        "OPENAI_API_KEY": "sk-x",
        "CODEX_FOO": "1",
        "CODEX_HOME": "/root/.codex",
        "AGENTD_MASTER_KEY": "never",
        "AWS_SECRET_ACCESS_KEY": "never",
    }
    kw.setdefault("binary", "/usr/bin/true")
    return CodexAgent(CodexConfig(data_dir=tmp_path, environ=environ, **kw))  # type: ignore[arg-type]


def test_exec_argv_prompt_on_stdin_and_resume(tmp_path: Path) -> None:
    a = agent(tmp_path)
    new = a.exec_argv(AgentRequest(project_id="p", prompt="--help me"))
    assert new[1:] == [
        "exec",
        "--json",
        "--skip-git-repo-check",
        "--dangerously-bypass-approvals-and-sandbox",
        "-",
    ]
    again = a.exec_argv(AgentRequest(project_id="p", prompt="x", session_id="tid-1", model="gpt-5.5"))
    assert again[1:3] == ["exec", "resume"] and again[-4:] == ["-m", "gpt-5.5", "tid-1", "-"]
    assert "x" not in again  # the prompt never goes on the command line


def test_env_is_a_whitelist_with_a_private_codex_home(tmp_path: Path) -> None:
    a = agent(tmp_path)
    env = a.build_env("proj", {"RUN_SECRET": "s3", "CODEX_HOME": "/elsewhere"})
    assert env["OPENAI_API_KEY"] == "sk-x" and env["CODEX_FOO"] == "1" and env["RUN_SECRET"] == "s3"
    assert env["CODEX_HOME"] == str(tmp_path / "homes" / "codex" / "proj" / ".codex")
    assert env["HOME"] == str(tmp_path / "homes" / "codex" / "proj")
    assert "AGENTD_MASTER_KEY" not in env and "AWS_SECRET_ACCESS_KEY" not in env


def test_config_written_per_project(tmp_path: Path) -> None:
    a = agent(tmp_path, base_url="http://127.0.0.1:9/v1", provider="fake", model="gpt-5.5")
    a.write_config("proj")
    text = (tmp_path / "homes" / "codex" / "proj" / ".codex" / "config.toml").read_text()
    assert 'model_provider = "fake"' in text and 'base_url = "http://127.0.0.1:9/v1"' in text
    assert 'model = "gpt-5.5"' in text and "request_max_retries = 4" in text


def test_native_binary_behind_the_npm_wrapper(tmp_path: Path) -> None:
    nm = tmp_path / "node_modules"
    wrapper = nm / "@openai" / "codex" / "bin" / "codex.js"
    native = nm / "@openai" / "codex-linux-x64" / "vendor" / "x86_64-unknown-linux-musl" / "bin" / "codex"
    for f in (wrapper, native):
        f.parent.mkdir(parents=True)
        f.write_text("#!/bin/sh\n")
        f.chmod(0o755)
    (nm / ".bin").mkdir()
    (nm / ".bin" / "codex").symlink_to(wrapper)
    if os.uname().machine in ("x86_64", "amd64"):
        assert native_binary(str(nm / ".bin" / "codex")) == str(native)
    assert native_binary(str(native)) == str(native)  # anything else: as given


def test_files_go_into_the_prompt() -> None:
    req = AgentRequest(
        project_id="p",
        prompt="look",
        files=(PromptFile(path="src/a.py"), PromptFile(content="hi", filename="n.txt")),
    )
    text = with_files(req)
    assert "src/a.py" in text and "<file name='n.txt'>\nhi\n</file>" in text


def test_capabilities_follow_the_mode(tmp_path: Path) -> None:
    assert agent(tmp_path, mode="app-server").capabilities().streaming is True
    assert agent(tmp_path, mode="exec").capabilities().streaming is False
    assert agent(tmp_path, mode="auto").capabilities().streaming is True


def test_the_jail_mounts_the_install_once(tmp_path: Path) -> None:
    nm = tmp_path / "tools" / "node_modules"
    wrapper = nm / "@openai" / "codex" / "bin" / "codex.js"
    native = nm / "@openai" / "codex-linux-x64" / "vendor" / "x86_64-unknown-linux-musl" / "bin" / "codex"
    for f in (wrapper, native):
        f.parent.mkdir(parents=True)
        f.write_text("#!/bin/sh\n")
        f.chmod(0o755)
    (nm / ".bin").mkdir()
    (nm / ".bin" / "codex").symlink_to(wrapper)
    a = CodexAgent(CodexConfig(data_dir=tmp_path / "data", binary=str(nm / ".bin" / "codex"), environ={}))
    jail = a.jail("proj")
    assert jail.workspace == tmp_path / "data" / "workspaces" / "proj"
    assert jail.home == tmp_path / "data" / "homes" / "codex" / "proj"
    assert jail.ro_paths == (nm,)


def test_the_ripgrep_beside_a_native_binary_reached_through_a_symlink(tmp_path: Path) -> None:
    """The Docker image's layout: /usr/local/bin/codex -> /usr/local/lib/codex/bin/codex, with codex-path/rg
    beside bin/: PATH gets the real folder, not one beside the link."""
    lib = tmp_path / "lib" / "codex"
    (lib / "bin").mkdir(parents=True)
    (lib / "codex-path").mkdir()
    native = lib / "bin" / "codex"
    native.write_text("#!/bin/sh\n")
    native.chmod(0o755)
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "codex").symlink_to(native)
    a = agent(tmp_path, binary=str(tmp_path / "bin" / "codex"))
    assert a.build_env("proj")["PATH"].split(os.pathsep)[-1] == str(lib / "codex-path")
