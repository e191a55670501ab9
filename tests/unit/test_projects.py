"""Projects' domain rules (URLs, refs, push branches, template variables) and the template library."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from agentd.adapters.template_library import DirectoryTemplateLibrary
from agentd.domain.errors import InvalidProject, InvalidRequest, TemplateNotFound
from agentd.domain.models import AgentRequest, PushRequest, validate_ref
from agentd.domain.projects import GitSource, ProjectSpec, redact_url, validate_git_url


@pytest.mark.parametrize(
    "url",
    [
        "https://github.com/org/repo.git",
        "http://127.0.0.1:8080/repo.git",
        "ssh://git@github.com/org/repo.git",
        "git@github.com:org/repo.git",
        "file:///srv/git/repo.git",
        "https://x-access-token@github.com/org/repo.git",  # a user, no password: fine
    ],
)
def test_good_git_urls(url: str) -> None:
    assert validate_git_url(url) == url


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("https://user:hunter22@github.com/o/r.git", "password"),
        ("ext::sh -c evil", "not supported"),
        ("fd::17", "not supported"),
        ("-uhttps://x", "repository URL"),
        ("/srv/git/repo.git", "not supported"),
        ("https:///nohost", "no host"),
        ("file://host/srv/repo.git", "absolute"),
        ("https://github.com/o/r.git\nx", "control"),
    ],
)
def test_bad_git_urls(url: str, words: str) -> None:
    with pytest.raises(InvalidProject, match=words):
        validate_git_url(url)


def test_redact_url_drops_user_information() -> None:
    assert redact_url("https://tok@github.com/o/r.git") == "https://github.com/o/r.git"
    assert redact_url("git@github.com:o/r.git") == "git@github.com:o/r.git"


@pytest.mark.parametrize("ref", ["main", "feature/x-1", "v1.2.3", "refs/pull/12/head", "a" * 40, "HEAD"])
def test_good_refs(ref: str) -> None:
    assert validate_ref(ref) == ref


@pytest.mark.parametrize(
    "ref",
    ["", "-main", "a..b", "a b", "a~1", "a^", "a:b", "x.lock", "a//b", "@{-1}", "/abs", "a\\b", "a" * 256],
)
def test_bad_refs(ref: str) -> None:
    with pytest.raises(InvalidRequest):
        validate_ref(ref)


def test_request_fields_ref_and_push() -> None:
    req = AgentRequest(project_id="p", prompt="x", ref="main", push=PushRequest(branch="fix/{job_id}"))
    assert req.push is not None and req.push.branch_for("job_1") == "fix/job_1"
    assert PushRequest().branch_for("job_9") == "agentd/job_9"
    with pytest.raises(InvalidRequest, match="full ref"):
        PushRequest(branch="refs/heads/x")
    with pytest.raises(InvalidRequest, match=r"push\.branch"):
        PushRequest(branch="bad..name")


def test_git_source_and_spec_rules() -> None:
    assert GitSource(url="https://h/r.git", credentials="GITHUB_TOKEN").credentials == "GITHUB_TOKEN"
    with pytest.raises(InvalidProject, match="max_running"):
        ProjectSpec(max_running=101)
    with pytest.raises(InvalidProject, match="share one workspace"):
        ProjectSpec(max_running=2)
    assert ProjectSpec(template="empty", max_running=2).max_running == 2
    with pytest.raises(InvalidProject, match="variable name"):
        ProjectSpec(template="empty", variables={"Bad-Name": "x"})


def test_the_shipped_templates() -> None:
    lib = DirectoryTemplateLibrary()
    assert [t.name for t in lib.list()] == ["empty", "node-service", "python-service"]
    for info in lib.list():
        files = lib.render(info.name, info.values({}, "demo"))
        for required in (".woodpecker.yml", ".github/workflows/agentd.yml", "CLAUDE.md", "AGENTS.md"):
            assert required in files, (info.name, required)
        woodpecker = yaml.safe_load(files[".woodpecker.yml"])
        assert woodpecker["when"] == [{"event": "pull_request"}]
        commands = " ".join(woodpecker["steps"][0]["commands"])
        assert "agentd submit --project demo" in commands and "--follow" in commands
        workflow = yaml.safe_load(files[".github/workflows/agentd.yml"])
        assert "pull_request" in workflow[True]  # YAML 1.1 reads the `on` key as True
        run = " ".join(str(s.get("run", "")) for s in workflow["jobs"]["review"]["steps"])
        assert "agentd submit --project demo" in run and "--follow" in run
        assert "${{ secrets.AGENTD_API_KEY }}" in files[".github/workflows/agentd.yml"].decode()
        assert b"{{" not in files["CLAUDE.md"]


def test_rendering_fills_variables_and_user_templates_win(tmp_path: Path) -> None:
    user = tmp_path / "mine"
    (user / "empty" / "dot-config").mkdir(parents=True)
    (user / "empty" / "template.toml").write_text(
        'name = "empty"\ndescription = "mine"\n[[variables]]\nname = "owner"\n'
    )
    (user / "empty" / "dot-config" / "{{ project_id }}.txt").write_text(
        "owner={{owner}} ${{ keep }} {{ unknown }}\n"
    )
    (user / "empty" / "img.bin").write_bytes(b"\xff\x00{{ owner }}")
    lib = DirectoryTemplateLibrary(DirectoryTemplateLibrary().dirs[0], user)
    info = lib.info("empty")
    assert info.description == "mine"
    with pytest.raises(InvalidProject, match=r"needs variables\.owner"):
        info.values({}, "p1")
    files = lib.render("empty", info.values({"owner": "ann"}, "p1"))
    assert files[".config/p1.txt"] == b"owner=ann ${{ keep }} {{ unknown }}\n"
    assert files["img.bin"] == b"\xff\x00{{ owner }}"  # binary files are copied as they are
    assert [t.name for t in lib.list()] == ["empty", "node-service", "python-service"]
    with pytest.raises(TemplateNotFound, match="known templates: empty, node-service, python-service"):
        lib.render("nope", {})
