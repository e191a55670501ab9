"""deploy/agentd.service: the hardening docs/security.md promises, and none that would break the jail."""

from __future__ import annotations

from pathlib import Path

UNIT = Path(__file__).resolve().parents[2] / "deploy" / "agentd.service"


def _service() -> dict[str, str]:
    out: dict[str, str] = {}
    section = ""
    for raw in UNIT.read_text().splitlines():
        line = raw.strip()
        if line.startswith("[") and line.endswith("]"):
            section = line
        elif section == "[Service]" and "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            out[key] = value
    return out


def test_the_unit_is_hardened() -> None:
    s = _service()
    assert s["UMask"] == "0077"
    assert s["NoNewPrivileges"] == "yes"
    assert s["ProtectSystem"] == "strict"
    assert s["PrivateTmp"] == "yes"
    data_dir = s["Environment"].removeprefix("AGENTD_DATA_DIR=")
    assert data_dir in s["ReadWritePaths"].split()
    assert s["StateDirectoryMode"] == "0700"


def test_the_unit_leaves_bubblewrap_what_it_needs() -> None:
    s = _service()
    for key in ("RestrictNamespaces", "ProtectKernelTunables", "ProtectProc", "PrivateUsers"):
        assert key not in s, f"{key} stops bwrap from building its sandbox"
