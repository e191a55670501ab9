"""Render deploy/kubernetes the way `kubectl kustomize` does, for the subset of kustomize it uses.

The subset: `namespace`, `resources` (plain manifest files), and `secretGenerator` entries with `envs` and
`disableNameSuffixHash`. Anything else in the kustomization is refused, so this never silently renders
something different from kustomize. When kubectl is installed, tests/deploy/test_deploy.py checks that both
renderings are the same objects.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import yaml

SUPPORTED = {"apiVersion", "kind", "namespace", "resources", "secretGenerator"}
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "PersistentVolume", "StorageClass"}


class Unsupported(ValueError):
    pass


def _env_file(path: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep:
            raise Unsupported(f"{path}: not KEY=VALUE: {line!r}")
        out[key.strip()] = value
    return out


def _secret(spec: dict[str, Any], base: Path, env_override: dict[str, Path]) -> dict[str, Any]:
    if set(spec) - {"name", "envs", "options"} or set(spec.get("options", {})) - {"disableNameSuffixHash"}:
        raise Unsupported(f"secretGenerator entry {spec.get('name')!r} uses more than envs/options")
    if not spec.get("options", {}).get("disableNameSuffixHash"):
        raise Unsupported("secretGenerator without disableNameSuffixHash (name hashing is not emulated)")
    data: dict[str, str] = {}
    for env in spec["envs"]:
        path = env_override.get(env, base / env)
        for key, value in _env_file(path).items():
            data[key] = base64.b64encode(value.encode()).decode()
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": spec["name"]},
        "type": "Opaque",
        "data": data,
    }


def render(directory: Path, *, env_override: dict[str, Path] | None = None) -> list[dict[str, Any]]:
    """The objects `kubectl kustomize directory` prints (env_override: read e.g. the .example file)."""
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    extra = set(kustomization) - SUPPORTED
    if extra:
        raise Unsupported(f"kustomization fields not emulated: {sorted(extra)}")
    objects: list[dict[str, Any]] = []
    for resource in kustomization.get("resources", []):
        objects.extend(doc for doc in yaml.safe_load_all((directory / resource).read_text()) if doc)
    for spec in kustomization.get("secretGenerator", []):
        objects.append(_secret(spec, directory, env_override or {}))
    namespace = kustomization.get("namespace")
    if namespace:
        for obj in objects:
            if obj["kind"] in CLUSTER_SCOPED:
                continue
            obj["metadata"]["namespace"] = namespace
            if obj["kind"] == "RoleBinding":
                for subject in obj.get("subjects", []):
                    if subject.get("kind") == "ServiceAccount":
                        subject["namespace"] = namespace
    return objects
