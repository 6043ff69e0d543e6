"""Dashboards, Prometheus configuration and alert rules: generated files are current, every query
names a series the farm exports (and docs/metrics.md has a row for each series and alert),
promtool accepts the rules and passes their unit tests, and the monitoring component carries the
rules as a PrometheusRule (the same groups as the rules file) and the dashboards annotated for
Grafana's "farm" folder."""

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from farm import alerts
from farm.dashboards import DASHBOARDS, queries, render
from farm.metrics import FarmMetrics

from .test_deploy import rendered

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
        if panel["type"] != "row":  # a row header queries nothing
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


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_panels_have_unique_ids_in_order_and_do_not_overlap(name):
    panels = json.loads(render(name))["panels"]
    assert [panel["id"] for panel in panels] == list(range(1, len(panels) + 1))
    taken: set[tuple[int, int]] = set()
    for panel in panels:
        grid = panel["gridPos"]
        assert 0 <= grid["x"] and grid["x"] + grid["w"] <= 24, panel["title"]
        columns, lines = range(grid["x"], grid["x"] + grid["w"]), range(grid["y"], grid["y"] + grid["h"])
        cells = {(x, y) for x in columns for y in lines}
        assert not cells & taken, f"{panel['title']} overlaps another panel"
        taken |= cells
        if panel["type"] == "row":  # a row header spans the width, on a line of its own
            assert (grid["x"], grid["w"], grid["h"]) == (0, 24, 1)


def test_overview_has_a_deliverables_row_on_the_cpu_stage_series():
    panels = json.loads(render("farm-overview.json"))["panels"]
    rows = [index for index, panel in enumerate(panels) if panel["type"] == "row"]
    assert [panels[index]["title"] for index in rows] == ["Deliverables (CPU stage)"]
    assert not panels[rows[0]]["collapsed"] and panels[rows[0]]["panels"] == []  # its panels follow it
    below = {panel["title"]: [t["expr"] for t in panel["targets"]] for panel in panels[rows[0] + 1:]}
    assert set(below) == {"Deliverables queue and running", "Deliverables made / failed per minute",
                          "Deliverable time p50 / p95", "Deliverable failures by reason"}
    assert below["Deliverables queue and running"] == ["sum(farm_post_queue_items)", "sum(farm_post_running_items)"]
    made, failed = below["Deliverables made / failed per minute"]
    assert 'farm_deliverables_total{outcome="made"}' in made and 'farm_deliverables_total{outcome="failed"}' in failed
    assert all("sum by (deliverable)" in expr for expr in (made, failed))
    p50, p95 = below["Deliverable time p50 / p95"]
    assert p50.startswith("histogram_quantile(0.5, sum by (deliverable, le) (rate(farm_post_seconds_bucket[")
    assert p95.startswith("histogram_quantile(0.95, sum by (deliverable, le) (rate(farm_post_seconds_bucket[")
    assert below["Deliverable failures by reason"] == [
        "sum by (deliverable, reason) (increase(farm_post_failures_total[$__rate_interval]))"]
    # every series of the CPU stage is on a panel; nothing above the row queries them
    names = {m for exprs in below.values() for e in exprs for m in re.findall(r"\bfarm_[a-z_]+", e)}
    assert names == {"farm_post_queue_items", "farm_post_running_items", "farm_deliverables_total",
                     "farm_post_seconds_bucket", "farm_post_failures_total"}
    assert not any("farm_post_" in t["expr"] or "farm_deliverables" in t["expr"]
                   for panel in panels[:rows[0]] for t in panel["targets"])


def test_the_deliverables_alerts_watch_the_cpu_stage_series():
    rules = {r["alert"]: r for r in yaml.safe_load((RULES / "farm-alerts.yml").read_text())["groups"][0]["rules"]}
    stuck = rules["FarmPostQueueStuck"]
    # `unless`, not `and ... == 0`: with no farm_deliverables_total series the queue alone decides
    assert "sum(farm_post_queue_items) > 0" in stuck["expr"] and "unless" in stuck["expr"]
    assert "farm_deliverables_total" in stuck["expr"] and stuck["for"] == "15m"
    ratio = rules["FarmDeliverableFailuresHigh"]
    assert 'farm_deliverables_total{outcome="failed"}' in ratio["expr"] and "> 0.1" in ratio["expr"]
    assert "skipped" not in ratio["expr"] and ratio["for"] == "15m"
    tests = yaml.safe_load((RULES / "farm-alerts.test.yml").read_text())["tests"]
    for alert in ("FarmPostQueueStuck", "FarmDeliverableFailuresHigh"):  # a firing and a quiet case each
        cases = [case for test in tests for case in test["alert_rule_test"] if case["alertname"] == alert]
        assert any(case["exp_alerts"] for case in cases) and any(not case["exp_alerts"] for case in cases), alert


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


def test_build_info_is_exported():
    assert "farm_build_info" in exported_names()


def test_alert_rules_use_exported_series():
    known = exported_names()
    rules = yaml.safe_load((RULES / "farm-alerts.yml").read_text())["groups"][0]["rules"]
    assert {r["alert"] for r in rules} == {
        "FarmOOMRateHigh", "FarmFailureRatioHigh", "FarmQueueNotDraining", "FarmTierWithoutWorkers", "FarmStorageErrors", "FarmJobLeaseLost",
        "FarmPostQueueStuck", "FarmDeliverableFailuresHigh",
    }
    for rule in rules:
        for metric in set(re.findall(r"\bfarm_[a-z_]+", rule["expr"])):
            assert metric in known, f"{rule['alert']}: {metric}"


def test_docs_name_every_exported_series_and_every_alert():
    doc = (ROOT / "docs" / "metrics.md").read_text()
    for metric in FarmMetrics().registry.collect():
        name = metric.name + ("_total" if metric.type == "counter" else "")
        assert f"| `{name}` |" in doc, f"docs/metrics.md: no row for {name}"
    for rule in yaml.safe_load((RULES / "farm-alerts.yml").read_text())["groups"][0]["rules"]:
        assert f"| `{rule['alert']}` |" in doc, f"docs/metrics.md: no row for {rule['alert']}"


def promtool():
    found = shutil.which("promtool")
    if not found:
        pytest.skip("promtool is missing (python3 dev.py test installs Debian's prometheus package)")
    return found


def test_promtool_checks_the_rules_and_the_config():
    tool = promtool()
    result = subprocess.run([tool, "check", "rules", "farm-alerts.yml"], cwd=RULES, capture_output=True, text=True)
    assert result.returncode == 0 and "SUCCESS: 8 rules found" in result.stdout, result.stdout + result.stderr
    result = subprocess.run([tool, "check", "config", "prometheus.yml"], cwd=RULES.parent, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_unit_tests_of_the_alerts_pass():
    result = subprocess.run([promtool(), "test", "rules", "farm-alerts.test.yml"], cwd=RULES, capture_output=True, text=True)
    assert result.returncode == 0 and "SUCCESS" in result.stdout, result.stdout + result.stderr


# --- the monitoring component (Prometheus operator, Grafana sidecar) ---------------------------------

MONITORING = ROOT / "k8s" / "components" / "monitoring"
# What the Prometheus operator's PrometheusRule CRD (monitoring.coreos.com/v1) accepts in a group and a rule.
GROUP_FIELDS = {"name", "interval", "limit", "labels", "partial_response_strategy", "query_offset", "rules"}
RULE_FIELDS = {"alert", "record", "expr", "for", "keep_firing_for", "labels", "annotations"}
DURATION = re.compile(r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$")


def test_the_committed_prometheusrule_is_generated_from_the_rules_file():
    assert alerts.OUTPUT.read_text() == alerts.render(), "run: python -m farm.alerts"
    rule = yaml.safe_load(alerts.OUTPUT.read_text())
    assert rule["apiVersion"] == "monitoring.coreos.com/v1" and rule["kind"] == "PrometheusRule"
    assert rule["spec"]["groups"] == yaml.safe_load((RULES / "farm-alerts.yml").read_text())["groups"]
    assert rule["metadata"]["labels"]["app.kubernetes.io/part-of"] == "farm"


def test_the_generator_follows_the_rules_file(tmp_path):
    changed = (RULES / "farm-alerts.yml").read_text().replace("for: 10m", "for: 11m")
    rule = yaml.safe_load(alerts.render(changed))
    assert rule["spec"]["groups"] == yaml.safe_load(changed)["groups"]
    assert rule != yaml.safe_load(alerts.render())
    assert alerts.main([str(tmp_path / "rule.yaml")]) == 0
    assert (tmp_path / "rule.yaml").read_text() == alerts.render()


def test_the_prometheusrule_uses_only_fields_the_operator_knows():
    rule = yaml.safe_load(alerts.OUTPUT.read_text())
    assert set(rule["spec"]) == {"groups"}
    for group in rule["spec"]["groups"]:
        assert set(group) <= GROUP_FIELDS and group["name"]
        for entry in group["rules"]:
            assert set(entry) <= RULE_FIELDS and entry["expr"] and ("alert" in entry) != ("record" in entry), entry
            assert DURATION.match(entry.get("for", "0")), entry
            assert all(isinstance(v, str) for v in {**entry.get("labels", {}), **entry.get("annotations", {})}.values())


def kustomizations_with_monitoring() -> list[str]:
    found = []
    for path in sorted((ROOT / "k8s").rglob("kustomization.yaml")):
        if "components" in path.relative_to(ROOT / "k8s").parts:
            continue
        listed = yaml.safe_load(path.read_text()).get("components") or []
        if any(Path(c).name == "monitoring" for c in listed):
            found.append(str(path.parent.relative_to(ROOT)))
    return found


def test_some_overlay_includes_the_monitoring_component():
    assert "k8s/overlays/gpu" in kustomizations_with_monitoring()


@pytest.mark.parametrize("path", kustomizations_with_monitoring())
def test_overlays_with_monitoring_render_the_prometheusrule_and_the_dashboards_folder(path):
    docs = rendered(path)
    namespaces = {d["metadata"].get("namespace") for d in docs if d["kind"] == "RayService"}
    rules = [d for d in docs if d["kind"] == "PrometheusRule"]
    assert len(rules) == 1
    rule = rules[0]
    assert rule["spec"]["groups"] == yaml.safe_load((RULES / "farm-alerts.yml").read_text())["groups"]
    assert {rule["metadata"].get("namespace")} == namespaces  # next to the farm it watches
    monitors = [d for d in docs if d["kind"] == "PodMonitor"]
    assert monitors
    for resource in [rule, *monitors]:  # one label convention for what the operator selects
        assert resource["metadata"]["labels"]["app.kubernetes.io/part-of"] == "farm", resource["metadata"]
    dashboards = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "farm-dashboards")
    assert dashboards["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert dashboards["metadata"]["annotations"]["grafana_folder"] == "farm"
    assert set(dashboards["data"]) == set(DASHBOARDS)


def test_overlays_without_monitoring_render_no_operator_resources():
    with_monitoring = set(kustomizations_with_monitoring())
    for path in ("k8s/overlays/cpu-dev", "k8s/rayjob"):
        if path in with_monitoring or not (ROOT / path / "kustomization.yaml").is_file():
            continue
        assert not [d for d in rendered(path) if d["apiVersion"].startswith("monitoring.coreos.com/")]
