"""Project templates on disk: the ones agentd ships (agentd/templates/<name>/) and the user's own
(AGENTD_TEMPLATES_DIR/<name>/, which hide a shipped one of the same name).

A template is a folder of files plus `template.toml`:

    name = "python-service"
    description = "A small Python HTTP service with tests"
    [[variables]]
    name = "agentd_url"
    description = "where CI reaches agentd"
    default = "http://agentd.example:8080"

Rendering fills `{{ variable }}` in file contents and paths with the project's values (`project_id` is
always given); `${{ ... }}` (GitHub Actions expressions) and unknown names are left as they are. A path
component written `dot-<name>` becomes `.<name>` (so `.github` and `.gitignore` survive packaging).
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from pathlib import Path

from pydantic import ValidationError

from agentd.domain.errors import InvalidProject, TemplateNotFound
from agentd.domain.projects import TEMPLATE_NAME_RE, TemplateInfo
from agentd.ports.workspace import TemplateLibrary

SHIPPED = Path(__file__).resolve().parents[1] / "templates"
MANIFEST = "template.toml"
_PLACEHOLDER = re.compile(r"(?<!\$)\{\{\s*([a-z][a-z0-9_]*)\s*\}\}")
MAX_TEMPLATE_BYTES = 16 * 1024 * 1024


class DirectoryTemplateLibrary(TemplateLibrary):
    def __init__(self, *dirs: Path | None) -> None:
        """Folders of templates, later ones winning (shipped first, then the user's)."""
        self.dirs = [d for d in (dirs or (SHIPPED,)) if d is not None]

    def _folders(self) -> dict[str, Path]:
        found: dict[str, Path] = {}
        for d in self.dirs:
            if not d.is_dir():
                continue
            for sub in sorted(d.iterdir()):
                if sub.is_dir() and (sub / MANIFEST).is_file() and TEMPLATE_NAME_RE.match(sub.name):
                    found[sub.name] = sub
        return found

    def _folder(self, name: str) -> Path:
        folder = self._folders().get(name)
        if folder is None:
            known = ", ".join(sorted(self._folders())) or "none"
            raise TemplateNotFound(f"no template {name!r}; known templates: {known}")
        return folder

    def info(self, name: str) -> TemplateInfo:
        return _manifest(self._folder(name))

    def list(self) -> list[TemplateInfo]:
        return [_manifest(folder) for _, folder in sorted(self._folders().items())]

    def render(self, name: str, variables: Mapping[str, str]) -> dict[str, bytes]:
        folder = self._folder(name)
        out: dict[str, bytes] = {}
        total = 0
        for path in sorted(folder.rglob("*")):
            if not path.is_file() or path.is_symlink() or path == folder / MANIFEST:
                continue
            rel = path.relative_to(folder).as_posix()
            if "__pycache__" in rel.split("/"):
                continue
            target = "/".join(_fill(_undot(part), variables) for part in rel.split("/"))
            data = path.read_bytes()
            total += len(data)
            if total > MAX_TEMPLATE_BYTES:
                raise InvalidProject(f"template {name!r} is larger than {MAX_TEMPLATE_BYTES} bytes")
            try:
                data = _fill(data.decode("utf-8"), variables).encode("utf-8")
            except UnicodeDecodeError:
                pass  # binary files are copied as they are
            out[target] = data
        return out


def _manifest(folder: Path) -> TemplateInfo:
    try:
        raw = tomllib.loads((folder / MANIFEST).read_text(encoding="utf-8"))
        raw.setdefault("name", folder.name)
        info = TemplateInfo.model_validate(raw)
    except (OSError, tomllib.TOMLDecodeError, ValidationError) as e:
        raise InvalidProject(f"template {folder.name!r}: bad {MANIFEST}: {e}") from None
    if info.name != folder.name:
        raise InvalidProject(f"template {folder.name!r}: {MANIFEST} names it {info.name!r}")
    return info


def _undot(part: str) -> str:
    return "." + part[4:] if part.startswith("dot-") and len(part) > 4 else part


def _fill(text: str, variables: Mapping[str, str]) -> str:
    return _PLACEHOLDER.sub(lambda m: variables.get(m.group(1), m.group(0)), text)
