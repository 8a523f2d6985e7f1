"""Helpers of the chart tests: where the chart is, the value sets it is rendered with, and
how to pick objects, pod specs and env out of a render."""

from collections.abc import Callable
from typing import Any

from tests.env import ROOT

CHART = ROOT / "charts" / "audit"
SHARED = ROOT.parent / "shared"
VALUES = {
    "default": [],
    "kind": ["-f", str(CHART / "values-kind.yaml")],
    "production": ["-f", str(CHART / "values-production.yaml")],
}
Render = Callable[..., list[dict[str, Any]]]


def find(objects: list[dict[str, Any]], kind: str, suffix: str = "") -> dict[str, Any]:
    (match,) = [o for o in objects if o["kind"] == kind and o["metadata"]["name"].endswith(suffix)]
    return match


def pod_spec(obj: dict[str, Any]) -> dict[str, Any]:
    if obj["kind"] == "CronJob":
        return pod_spec({"kind": "Job", "spec": obj["spec"]["jobTemplate"]["spec"]})
    spec: dict[str, Any] = obj["spec"] if obj["kind"] == "Pod" else obj["spec"]["template"]["spec"]
    return spec


def env_of(obj: dict[str, Any], name: str) -> dict[str, Any]:
    """Every container's env as ``{name: value}`` (``None`` for values from references)."""
    return {
        e["name"]: e.get("value") for c in pod_spec(obj)["containers"] for e in c.get("env", [])
    }
