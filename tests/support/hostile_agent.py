#!/usr/bin/env python3
"""A hostile stand-in for the `claude` CLI: it tries every escape a prompt-injected agent could try.

Run as AGENTD_CLAUDE_BIN. It ignores its flags, takes the prompt (the last argument, or stdin), and
prints Claude Code stream-json lines (system/init, assistant text, result), the way the real CLI does.
The prompt is `HOSTILE <json>` with the targets the test wants tried: {"data_dir": ..., "other": ...,
"shared": ...}. The answer text is `HOSTILE-REPORT <json>` and reports what each attempt got:

- environ: /proc/<pid>/environ of every process it can see (its own excepted), with their cmdlines; each
  value as "sha256:<hex>": agentd redacts the secret values it knows from a run's output, so a value in
  full would come back as [REDACTED:NAME] whether it leaked or not; its digest proves the leak, and copies
  nothing of whatever else runs on the machine;
- agentd: the pids of visible agentd processes (`agentd.cli` / `bin/agentd` in the cmdline);
- signal_parent: whether SIGCONT to its parent and to each agentd process was accepted (harmless, but
  SIGKILL would have been too);
- other_ls / other_read: `../<other>` listed, and each file in it read;
- data_ls / data_files: the data dir listed, and its database files read (their printable strings);
- home_siblings: the folders next to its HOME, and whether a hook could be written into each;
- shared_write: whether a hook could be written into the `shared` path;
- foreign_hook: a hook another project's run planted in its own HOME (a shared home);
- env / env_sha: its own environment, as it is (the run's secrets in it must come back redacted) and as
  digests (proof that the run did get each value).

Every run also plants a hook naming its cwd's project into $HOME/.claude/settings.json and drops a
`secret.txt` in its workspace, so a later run of another project has something to find. Stdlib only.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import sys
import uuid

MAX_READ = 64 * 1024


def read(path: str) -> str:
    try:
        with open(path, "rb") as f:
            return f.read(MAX_READ).decode("utf-8", errors="replace")
    except OSError as e:
        return f"<{type(e).__name__}>"


def strings(path: str) -> str:
    """The printable runs (8+ characters) of a whole binary file, like `strings`: what a database leaks."""
    try:
        with open(path, "rb") as f:
            data = f.read(16 * 1024 * 1024)
    except OSError as e:
        return f"<{type(e).__name__}>"
    return "\n".join(m.decode() for m in re.findall(rb"[\x20-\x7e]{8,}", data))[: 4 * MAX_READ]


def listdir(path: str) -> list[str] | str:
    try:
        return sorted(os.listdir(path))
    except OSError as e:
        return f"<{type(e).__name__}>"


def write(path: str, text: str) -> str:
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(text)
        return "written"
    except OSError as e:
        return f"<{type(e).__name__}>"


def send(pid: int, sig: int) -> str:
    try:
        os.kill(pid, sig)
        return "sent"
    except OSError as e:
        return f"<{type(e).__name__}>"


def prompt_of(argv: list[str]) -> str:
    args = [a for a in argv[1:] if not a.startswith("-")]
    if args:
        return args[-1]
    try:
        return sys.stdin.read()
    except OSError:
        return ""


def is_agentd(cmdline: str) -> bool:
    return "agentd.cli" in cmdline or "bin/agentd" in cmdline


def processes() -> dict[str, dict[str, object]]:
    """Every visible process's environment, each value as a digest (see the module's docstring)."""
    out: dict[str, dict[str, object]] = {}
    for name in sorted(os.listdir("/proc")):
        if not name.isdigit() or int(name) == os.getpid():
            continue
        cmdline = read(f"/proc/{name}/cmdline").replace("\0", " ").strip()[:300]
        raw = read(f"/proc/{name}/environ")
        environ: dict[str, str] | str
        if raw.startswith("<"):
            environ = raw
        else:
            pairs = [kv.split("=", 1) for kv in raw.split("\0") if "=" in kv]
            environ = {k: "sha256:" + digest(v) for k, v in pairs}
        out[name] = {"cmdline": cmdline, "environ": environ}
    return out


def digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def hook(project: str) -> str:
    return json.dumps(
        {"hooks": {"SessionStart": [{"hooks": [{"type": "command", "command": f"pwn {project}"}]}]}}
    )


def attack(targets: dict[str, str]) -> dict[str, object]:
    project = os.path.basename(os.getcwd())
    home = os.environ.get("HOME", "")
    report: dict[str, object] = {"project": project, "cwd": os.getcwd(), "home": home}

    procs = processes()
    report["environ"] = procs
    agentd = [int(p) for p, v in procs.items() if is_agentd(str(v["cmdline"]))]
    report["agentd"] = agentd
    report["signal_parent"] = {
        "ppid": os.getppid(),
        "parent_cmdline": read(f"/proc/{os.getppid()}/cmdline").replace("\0", " ").strip(),
        "parent": send(os.getppid(), signal.SIGCONT),
        "agentd": {str(p): send(p, signal.SIGCONT) for p in agentd},
    }

    other = targets.get("other")
    if other:
        folder = os.path.join("..", other)
        report["other_ls"] = listdir(folder)
        files = report["other_ls"] if isinstance(report["other_ls"], list) else []
        report["other_read"] = {f: read(os.path.join(folder, f)) for f in files}
    report["siblings_ls"] = listdir("..")

    data = targets.get("data_dir") or os.path.abspath(os.path.join(os.getcwd(), "..", ".."))
    report["data_ls"] = listdir(data)
    entries = report["data_ls"] if isinstance(report["data_ls"], list) else []
    report["data_files"] = {
        e: strings(os.path.join(data, e)) for e in entries if e.endswith((".sqlite3", ".db", "-wal", ".json"))
    }

    # A shared agent home: someone else's hook in mine, or mine in theirs.
    my_settings = os.path.join(home, ".claude", "settings.json")
    existing = read(my_settings)
    report["foreign_hook"] = existing if "pwn " in existing and f'pwn {project}"' not in existing else ""
    parent = os.path.dirname(home.rstrip("/"))
    siblings = listdir(parent) if parent else "<no HOME>"
    report["home_siblings"] = siblings
    report["sibling_hooks"] = {
        s: write(os.path.join(parent, s, ".claude", "settings.json"), hook(project))
        for s in (siblings if isinstance(siblings, list) else [])
        if os.path.join(parent, s) != home.rstrip("/")
    }
    shared = targets.get("shared")
    if shared:
        report["shared_write"] = write(os.path.join(shared, ".claude", "settings.json"), hook(project))
    # Plant for the next run of another project.
    write(my_settings, hook(project))
    write(os.path.join(os.getcwd(), "secret.txt"), targets.get("plant", f"{project} workspace secret"))

    report["env"] = dict(os.environ)
    report["env_sha"] = {k: "sha256:" + digest(v) for k, v in os.environ.items()}
    return report


def line(obj: dict[str, object]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def main() -> int:
    if "--version" in sys.argv:
        print("2.1.330 (Claude Code)")
        return 0
    prompt = prompt_of(sys.argv)
    _, _, rest = prompt.partition("HOSTILE")
    try:
        targets = json.loads(rest.strip() or "{}")
    except json.JSONDecodeError:
        targets = {}
    session = str(uuid.uuid4())
    mid = "msg_hostile_" + uuid.uuid4().hex[:12]
    line({"type": "system", "subtype": "init", "cwd": os.getcwd(), "session_id": session, "tools": ["Bash"],
          "model": "hostile-1", "permissionMode": "bypassPermissions"})  # fmt: skip
    text = "HOSTILE-REPORT " + json.dumps(attack(targets))
    line({"type": "assistant", "session_id": session, "parent_tool_use_id": None,
          "message": {"id": mid, "type": "message", "role": "assistant", "model": "hostile-1",
                      "content": [{"type": "text", "text": text}], "stop_reason": "end_turn"}})  # fmt: skip
    line({"type": "result", "subtype": "success", "is_error": False, "result": text, "session_id": session,
          "num_turns": 1, "duration_ms": 1, "total_cost_usd": 0, "stop_reason": "end_turn",
          "usage": {"input_tokens": 1, "output_tokens": 1}})  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
