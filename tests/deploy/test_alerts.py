"""promtool checks the rules and runs their unit tests; every alert links its README runbook;
the dashboard shows what the runbooks point at; every metric they read exists."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import yaml
from prometheus_client import CollectorRegistry

from consumer.observability.metrics import Metrics
from tests.deploy.tools import (
    ALERT_TESTS,
    ALERTS,
    DASHBOARD,
    ROOT,
    alert_rules,
    metric_names,
    require_tool,
    run,
)

RUNBOOK_BASE = "https://git.example.com/consent/didomi-salesforce-sync/-/blob/main/README.md#"


def _rules_file(directory: Path, *, summary_only: bool = False) -> Path:
    """The PrometheusRule's groups as a plain Prometheus rule file."""
    spec = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))["spec"]
    if summary_only:
        for group in spec["groups"]:
            for rule in group["rules"]:
                if "annotations" in rule:
                    rule["annotations"] = {"summary": rule["annotations"]["summary"]}
    path = directory / "alerts.rules.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
    return path


def _dashboard_exprs() -> list[str]:
    board = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return [t["expr"] for p in board["panels"] for t in p.get("targets", [])]


def _service_metric_names() -> set[str]:
    """Every series name the service can expose (histograms' and counters' suffixes too)."""
    names = set()
    for family in Metrics(CollectorRegistry()).registry.collect():
        suffixes = {
            "counter": ("_total",),
            "histogram": ("_bucket", "_count", "_sum"),
        }.get(family.type, ("",))
        names |= {family.name + s for s in suffixes}
    return names


def test_promtool_accepts_the_rules(tmp_path: Path) -> None:
    done = run(require_tool("promtool"), "check", "rules", str(_rules_file(tmp_path)))
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in done.stdout


def test_promtool_unit_tests_pass(tmp_path: Path) -> None:
    promtool = require_tool("promtool")
    _rules_file(tmp_path, summary_only=True)
    shutil.copy(ALERT_TESTS, tmp_path / ALERT_TESTS.name)
    done = run(promtool, "test", "rules", str(tmp_path / ALERT_TESTS.name))
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_alert_is_shown_firing_by_a_unit_test() -> None:
    tests = yaml.safe_load(ALERT_TESTS.read_text(encoding="utf-8"))["tests"]
    firing = {
        case["alertname"]
        for test in tests
        for case in test.get("alert_rule_test", [])
        if case.get("exp_alerts")
    }
    alerts = {r["alert"] for r in alert_rules() if "alert" in r}
    assert alerts - firing == set()
    assert len(alerts) == 19


def test_every_alert_has_a_severity_and_a_runbook_section_in_the_readme() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    anchors = {
        re.sub(r"[^a-z0-9 _-]", "", m.group(1).strip().lower()).replace(" ", "-")
        for m in re.finditer(r"^#{2,6} (.+)$", readme, re.M)
    }
    for rule in alert_rules():
        if "alert" not in rule:
            continue
        assert rule["labels"]["severity"] in {"warning", "critical"}
        annotations: dict[str, Any] = rule["annotations"]
        assert "runbook" not in annotations  # a link, not prose
        url = annotations["runbook_url"]
        assert url.startswith(RUNBOOK_BASE), url
        assert url.removeprefix(RUNBOOK_BASE) in anchors, f"README has no section for {url}"

    # Every aggregation keeps the namespace, so environments alert apart.
    for rule in alert_rules():
        for by in re.findall(r"\bby \(([^)]*)\)", rule["expr"]):
            assert "namespace" in by.split(", ") or by == "le", (rule.get("alert"), by)


def test_the_dashboard_shows_what_the_runbooks_point_at() -> None:
    board = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    exprs = "\n".join(_dashboard_exprs())
    latency = "sum by (le, operation) (rate(consent_sync_salesforce_call_duration_seconds_bucket"
    for q in ("0.5", "0.95", "0.99"):
        assert f"histogram_quantile({q}, {latency}" in exprs
    assert "consent_sync_salesforce_writes_paused" in exprs
    assert "sum by (reason) (increase(consent_sync_salesforce_pauses_total" in exprs
    assert "sum by (error_class) (rate(consent_sync_dead_letters_total" in exprs
    assert "consent_sync_consumer_lag_messages" in exprs
    outcomes = next(p for p in board["panels"] if "consent_sync_outcomes_total" in json.dumps(p))
    named = json.dumps(outcomes["fieldConfig"]["overrides"])
    for status in (
        "updated",
        "created",
        "partial",
        "stale",
        "unchanged",
        "not_found",
        "ignored",
        "rejected",
        "failed",
    ):
        assert f"^{status}(" in named, status


def test_every_metric_the_alerts_and_dashboard_read_exists() -> None:
    used = set()
    for expr in _dashboard_exprs() + [r["expr"] for r in alert_rules()]:
        used |= metric_names(expr)
    service = {name for name in used if name.startswith("consent_sync_")}
    assert service - _service_metric_names() == set()
    kube = used - service  # kube-state-metrics
    assert kube == {
        "kube_deployment_spec_replicas",
        "kube_deployment_status_replicas_available",
        "kube_pod_container_status_restarts_total",
    }
