"""Every command a chart pod runs (lifecycle hooks too) exists in the image it runs in: a
console script of that image's workspace member, or ``python -c`` code whose imports that image
installs. ``helm template`` renders a broken test pod happily (``from audit_api.auth import …``
after the module moved): only a cluster would notice, so this checks it against the workspace."""

import ast
import importlib.metadata
import re
import sys
from typing import Any

import pytest

from tests.chart.rendering import VALUES, Render, pod_spec


def installed(distribution: str) -> tuple[set[str], set[str]]:
    """(console scripts, top-level modules) of ``distribution`` and everything it requires,
    as ``uv sync --package`` installs them into its image."""
    scripts: set[str] = set()
    modules: set[str] = set(sys.stdlib_module_names)
    todo, seen = [distribution], set()
    while todo:
        name = todo.pop()
        key = re.sub(r"[-_.]+", "-", name).lower()
        if key in seen:
            continue
        seen.add(key)
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            continue  # an optional or platform-only requirement
        scripts |= {ep.name for ep in dist.entry_points if ep.group == "console_scripts"}
        modules.add(key.replace("-", "_"))  # a workspace member (installed editable here)
        top = dist.read_text("top_level.txt")
        if top:
            modules |= set(top.split())
        modules |= {
            str(f).split("/")[0].removesuffix(".py")
            for f in dist.files or ()
            if "/" in str(f) or str(f).endswith(".py")
        }
        for requirement in dist.requires or ():
            if "extra ==" not in requirement:
                todo.append(re.split(r"[ ;<>=!~\[(]", requirement, maxsplit=1)[0])
    scripts |= {"python", "python3", "sh"}
    return scripts, modules


def imports(code: str) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module.split(".")[0])
    return found


def problems(container: dict[str, Any]) -> list[str]:
    """What in this container's command its image does not hold."""
    image = container["image"].rsplit("/", 1)[-1].split(":")[0]
    if not image.startswith("audit-"):
        return []  # the bundled NATS and PostgreSQL
    scripts, modules = installed(image)
    command = [*container.get("command", []), *container.get("args", [])]
    found = []
    if command and command[0] not in scripts:
        found.append(f"{container['name']}: {command[0]!r} is not a command of {image}")
    if command[:2] in (["python", "-c"], ["python3", "-c"]):
        for module in sorted(imports(command[2]) - modules):
            found.append(f"{container['name']}: imports {module!r}, which {image} does not hold")
        for module in sorted(imports(command[2]) & modules):
            if module.startswith("audit_"):
                _resolvable(command[2], found, container["name"])
    for hook, handler in container.get("lifecycle", {}).items():  # preStop runs in the image too
        if "exec" in handler:
            name, command = f"{container['name']} {hook}", handler["exec"]["command"]
            found += problems({"name": name, "image": container["image"], "command": command})
    return found


def _resolvable(code: str, found: list[str], name: str) -> None:
    """``from audit_x.y import z``: the module and the name exist in the workspace."""
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("audit_"):
            try:
                module = importlib.import_module(node.module)
            except ImportError:
                found.append(f"{name}: module {node.module!r} does not exist")
                continue
            for alias in node.names:
                if not hasattr(module, alias.name):
                    found.append(f"{name}: {node.module}.{alias.name} does not exist")


def containers(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    kinds = {"Deployment", "StatefulSet", "Job", "Pod", "CronJob"}
    specs = [pod_spec(o) for o in objects if o["kind"] in kinds]
    return [c for s in specs for c in [*s.get("initContainers", []), *s["containers"]]]


@pytest.mark.parametrize("values", list(VALUES))
def test_every_pod_command_exists_in_its_image(render: Render, values: str) -> None:
    objects = render(values, "--set", "verify.enabled=true", "--set", "helmTest.enabled=true")
    found = [p for c in containers(objects) for p in problems(c)]
    assert not found, found


def test_the_check_names_a_moved_import_and_a_missing_command() -> None:
    """The check itself can fail: the helm test pod as it was (audit_api.auth moved)."""
    old = {
        "name": "request",
        "image": "audit-api:0.1.0",
        "command": ["python", "-c", "from audit_api.auth import issue_token\n"],
    }
    assert problems(old) == ["request: module 'audit_api.auth' does not exist"]
    gone = {"name": "verify", "image": "audit-consumer:0.1.0", "command": ["audit-verify"]}
    assert problems(gone) == ["verify: 'audit-verify' is not a command of audit-consumer"]
    hook = {
        "name": "api",
        "image": "audit-api:0.1.0",
        "command": ["audit-api"],
        "lifecycle": {"preStop": {"exec": {"command": ["audit-drain"]}}},
    }
    assert problems(hook) == ["api preStop: 'audit-drain' is not a command of audit-api"]
