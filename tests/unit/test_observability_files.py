"""Dashboards, Prometheus configuration and alert rules: generated files are current, every query
names a series the farm exports, and promtool accepts the rules and passes their unit tests."""

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from farm.dashboards import DASHBOARDS, queries, render
from farm.metrics import FarmMetrics

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus" / "rules"


def exported_names() -> set[str]:
    names = set()
    for metric in FarmMetrics().registry.collect():
        names.add(metric.name)
        kind = metric.type
        if kind == "counter":
            names.add(metric.name + "_total")
        if kind == "histogram":
            names |= {metric.name + suffix for suffix in ("_bucket", "_count", "_sum")}
    return names


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_committed_dashboards_are_generated_from_code(name):
    from farm.dashboards import OUTPUTS

    for folder in OUTPUTS:
        assert (folder / name).read_text() == render(name), "run: python -m farm.dashboards"


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_every_panel_queries_farm_series_through_the_datasource_variable(name):
    dashboard = json.loads(render(name))
    assert dashboard["templating"]["list"][0]["type"] == "datasource"
    known = exported_names()
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == "${datasource}"
    for title, expr in queries(dashboard):
        for metric in set(re.findall(r"\bfarm_[a-z_]+", expr)):
            assert metric in known, f"{title}: {metric} is not exported"


def test_overview_has_the_panels_operators_need():
    titles = {panel["title"] for panel in json.loads(render("farm-overview.json"))["panels"]}
    for needed in ("Videos per minute", "Frames per second", "Queue by tier", "In flight by tier",
                   "Render time p50 / p95 by tier", "Peak memory (p95) against the tier budget",
                   "OOM errors per minute", "Degradations per minute", "Failures by reason",
                   "Upload throughput", "Workers by tier and state"):
        assert needed in titles


def test_provisioning_and_scrape_config_parse():
    datasources = yaml.safe_load((ROOT / "deploy/grafana/provisioning/datasources/prometheus.yml").read_text())
    assert datasources["datasources"][0]["type"] == "prometheus"
    providers = yaml.safe_load((ROOT / "deploy/grafana/provisioning/dashboards/farm.yml").read_text())
    assert providers["providers"][0]["options"]["path"]
    config = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert jobs["farm"]["metrics_path"] == "/metrics"
    assert jobs["ray"]["file_sd_configs"][0]["files"] == ["/tmp/ray/prom_metrics_service_discovery.json"]
    assert config["rule_files"] == ["rules/farm-alerts.yml"]


def test_alert_rules_use_exported_series():
    known = exported_names()
    rules = yaml.safe_load((RULES / "farm-alerts.yml").read_text())["groups"][0]["rules"]
    assert {r["alert"] for r in rules} == {
        "FarmOOMRateHigh", "FarmFailureRatioHigh", "FarmQueueNotDraining", "FarmTierWithoutWorkers", "FarmStorageErrors",
    }
    for rule in rules:
        for metric in set(re.findall(r"\bfarm_[a-z_]+", rule["expr"])):
            assert metric in known, f"{rule['alert']}: {metric}"


def promtool():
    found = shutil.which("promtool")
    if not found:
        pytest.skip("promtool is missing (python3 dev.py test installs Debian's prometheus package)")
    return found


def test_promtool_checks_the_rules_and_the_config():
    tool = promtool()
    result = subprocess.run([tool, "check", "rules", "farm-alerts.yml"], cwd=RULES, capture_output=True, text=True)
    assert result.returncode == 0 and "SUCCESS: 5 rules found" in result.stdout, result.stdout + result.stderr
    result = subprocess.run([tool, "check", "config", "prometheus.yml"], cwd=RULES.parent, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_unit_tests_of_the_alerts_pass():
    result = subprocess.run([promtool(), "test", "rules", "farm-alerts.test.yml"], cwd=RULES, capture_output=True, text=True)
    assert result.returncode == 0 and "SUCCESS" in result.stdout, result.stdout + result.stderr
