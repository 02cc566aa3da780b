"""The shipped Grafana dashboard and Prometheus rules query only metrics that
/metrics exposes, and the rules cover the staff alerts."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess

import pytest
import yaml

from tests.harness import BASE_DIR

DEPLOY = BASE_DIR / "deploy"
METRIC = re.compile(r"\b((?:celery|claw)_[a-z_]+)\b")


def dashboard_queries() -> list[str]:
    dashboard = json.loads((DEPLOY / "grafana/claw.json").read_text())
    return [t["expr"] for p in dashboard["panels"] for t in p["targets"]]


def rules() -> list[dict]:
    groups = yaml.safe_load((DEPLOY / "prometheus/alerts.yml").read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


# The text format's # TYPE line names a counter with its _total already.
SUFFIXES = {
    "counter": ("",),
    "histogram": ("_bucket", "_sum", "_count"),
    "gauge": ("",),
}


def exposed_families(text: str) -> dict[str, str]:
    """Metric family name -> type, from the exposition's # TYPE lines."""
    families = {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            families[name] = kind
    return families


@pytest.mark.django_db
def test_every_metric_the_dashboard_and_rules_query_is_exposed(admin_client):
    response = admin_client.get("/metrics")
    assert response.status_code == 200
    families = exposed_families(response.content.decode())
    samples = {
        name + suffix: name
        for name, kind in families.items()
        for suffix in SUFFIXES[kind]
    }
    queried = set()
    for expr in dashboard_queries() + [rule["expr"] for rule in rules()]:
        queried.update(METRIC.findall(expr))

    assert queried, "no metric found in the queries"
    assert queried - set(samples) == set()
    # and the dashboard shows every metric /metrics has
    shown = {samples[name] for name in METRIC.findall(" ".join(dashboard_queries()))}
    assert set(families) - shown == set()


def test_the_rules_match_the_staff_alerts():
    by_name = {rule["alert"]: rule for rule in rules()}
    assert {
        "ClawNoLiveWorker",
        "ClawQueueBacklog",
        "ClawFailureRatio",
        "ClawBeatStale",
        "ClawOldestPendingAge",
    } <= set(by_name)
    assert "celery_active_worker_count == 0" in by_name["ClawNoLiveWorker"]["expr"]
    for rule in by_name.values():
        assert rule["annotations"]["summary"] and rule["labels"]["severity"]


def test_the_dashboard_is_valid_grafana_json():
    dashboard = json.loads((DEPLOY / "grafana/claw.json").read_text())
    assert dashboard["uid"] and dashboard["title"]
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == "prometheus"  # the provisioned one
        assert panel["targets"]


def test_promtool_accepts_the_rules():
    if not shutil.which("promtool"):
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("promtool is not installed (CI=true: .ci/run installs it)")
        pytest.skip("promtool not installed (apt-get install prometheus)")
    result = subprocess.run(
        ["promtool", "check", "rules", str(DEPLOY / "prometheus/alerts.yml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
