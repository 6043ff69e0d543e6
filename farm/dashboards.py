"""Grafana dashboards of the farm, generated from code: `python -m farm.dashboards` writes them
to dashboards/. Tests check that the files are up to date and that every query evaluates
against a real Prometheus scraping a real farm.

Two dashboards, both with a Prometheus datasource variable: an overview (throughput, queues,
latency, memory against the tier budgets, OOMs and degradations, failures, uploads, workers,
jobs; then a "Deliverables (CPU stage)" row: the post-processing queue, deliverables made and
failed, their time and their failures by reason) and a per-tier view (the same series for one
`$tier`).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

RATE = "$__rate_interval"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}


def _panel(title: str, targets: list[tuple[str, str]], *, unit: str = "short", kind: str = "timeseries",
           description: str = "", width: int = 12) -> dict:
    return {
        "type": kind,
        "title": title,
        "description": description,
        "datasource": DATASOURCE,
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": {"legend": {"displayMode": "list", "placement": "bottom"}} if kind == "timeseries" else {},
        "targets": [
            {"refId": chr(ord("A") + index), "datasource": DATASOURCE, "expr": expr, "legendFormat": legend}
            for index, (expr, legend) in enumerate(targets)
        ],
        "gridPos": {"w": width, "h": 8},
    }


def _row(title: str) -> dict:
    """A row header (expanded: the panels after it in the list are its panels)."""
    return {"type": "row", "title": title, "collapsed": False, "panels": [], "gridPos": {"w": 24, "h": 1}}


def _layout(panels: list[dict]) -> list[dict]:
    """Left to right, a new line when a panel does not fit and at every row header; ids in order."""
    x = y = line = 0  # line: the height of the current line
    for index, panel in enumerate(panels):
        width, height = panel["gridPos"]["w"], panel["gridPos"]["h"]
        if x and (x + width > 24 or panel["type"] == "row"):
            x, y, line = 0, y + line, 0
        panel["gridPos"].update(x=x, y=y)
        panel["id"] = index + 1
        x += width
        line = max(line, height)
    return panels


def _variables(tier: bool) -> list[dict]:
    variables = [
        {
            "name": "datasource",
            "label": "Prometheus",
            "type": "datasource",
            "query": "prometheus",
            "current": {},
            "hide": 0,
        }
    ]
    if tier:
        variables.append(
            {
                "name": "tier",
                "label": "Tier",
                "type": "query",
                "datasource": DATASOURCE,
                "query": {"query": "label_values(farm_workers, tier)", "refId": "tiers"},
                "definition": "label_values(farm_workers, tier)",
                "refresh": 2,
                "current": {},
                "hide": 0,
            }
        )
    return variables


def _dashboard(uid: str, title: str, panels: list[dict], *, tier: bool) -> dict:
    return {
        "uid": uid,
        "title": title,
        "tags": ["farm"],
        "timezone": "browser",
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"},
        "templating": {"list": _variables(tier)},
        "panels": _layout(panels),
    }


def overview() -> dict:
    panels = [
        _panel("Videos per minute", [
            (f'sum(rate(farm_items_total{{outcome="succeeded"}}[{RATE}])) * 60', "videos/min"),
            (f'sum(rate(farm_items_total{{outcome="failed"}}[{RATE}])) * 60', "failed/min"),
        ], unit="short", width=8),
        _panel("Frames per second", [(f"sum by (tier) (rate(farm_frames_rendered_total[{RATE}]))", "{{tier}}")],
               unit="short", width=8),
        _panel("Jobs by state", [("sum by (state) (farm_jobs)", "{{state}}")], width=8),
        _panel("Queue by tier", [("sum by (tier) (farm_queue_items)", "{{tier}}")],
               description="Items waiting, by the tier they are planned for: the bottleneck tier has the longest queue."),
        _panel("In flight by tier", [("sum by (tier) (farm_items_in_flight)", "{{tier}}")]),
        _panel("Render time p50 / p95 by tier", [
            (f"histogram_quantile(0.5, sum by (tier, le) (rate(farm_render_seconds_bucket[{RATE}])))", "p50 {{tier}}"),
            (f"histogram_quantile(0.95, sum by (tier, le) (rate(farm_render_seconds_bucket[{RATE}])))", "p95 {{tier}}"),
        ], unit="s"),
        _panel("Peak memory (p95) against the tier budget", [
            (f"histogram_quantile(0.95, sum by (tier, le) (rate(farm_gpu_memory_peak_bytes_bucket[{RATE}])))", "peak p95 {{tier}}"),
            ("max by (tier) (farm_tier_budget_bytes) and on (tier) (sum by (tier) (farm_workers) > 0)", "budget {{tier}}"),
        ], unit="bytes"),
        _panel("OOM errors per minute", [
            (f"sum by (tier, resolution) (rate(farm_oom_total[{RATE}])) * 60", "{{tier}} {{resolution}}p"),
        ], width=8),
        _panel("Degradations per minute", [(f"sum by (step) (rate(farm_degradations_total[{RATE}])) * 60", "{{step}}")],
               width=8),
        _panel("Failures by reason", [(f"sum by (reason) (increase(farm_item_failures_total[{RATE}]))", "{{reason}}")],
               width=8),
        _panel("Upload throughput", [
            (f"sum(rate(farm_storage_upload_bytes_total[{RATE}]))", "bytes/s"),
        ], unit="Bps", width=8),
        _panel("Upload time p95", [
            (f"histogram_quantile(0.95, sum by (le) (rate(farm_storage_upload_seconds_bucket[{RATE}])))", "p95"),
        ], unit="s", width=8),
        _panel("Workers by tier and state", [("sum by (tier, state) (farm_workers)", "{{tier}} {{state}}")], width=8),
        _panel("Device memory in use per worker", [
            ("farm_gpu_memory_used_bytes / farm_gpu_memory_total_bytes", "{{worker}}"),
        ], unit="percentunit", width=24),
        _row("Deliverables (CPU stage)"),
        *deliverables_panels(),
    ]
    return _dashboard("farm-overview", "farm / overview", panels, tier=False)


def deliverables_panels() -> list[dict]:
    """The CPU stage: files made from each committed render (vertical, web, gif...)."""
    return [
        _panel("Deliverables queue and running", [
            ("sum(farm_post_queue_items)", "queued"),
            ("sum(farm_post_running_items)", "running"),
        ], description="Items whose deliverables wait for a CPU worker, and those being made. A queue that "
                       "stays up while no deliverable is finished fires FarmPostQueueStuck."),
        _panel("Deliverables made / failed per minute", [
            (f'sum by (deliverable) (rate(farm_deliverables_total{{outcome="made"}}[{RATE}])) * 60', "made {{deliverable}}"),
            (f'sum by (deliverable) (rate(farm_deliverables_total{{outcome="failed"}}[{RATE}])) * 60', "failed {{deliverable}}"),
        ]),
        _panel("Deliverable time p50 / p95", [
            (f"histogram_quantile(0.5, sum by (deliverable, le) (rate(farm_post_seconds_bucket[{RATE}])))", "p50 {{deliverable}}"),
            (f"histogram_quantile(0.95, sum by (deliverable, le) (rate(farm_post_seconds_bucket[{RATE}])))", "p95 {{deliverable}}"),
        ], unit="s", description="Making and committing one deliverable (made ones only)."),
        _panel("Deliverable failures by reason", [
            (f"sum by (deliverable, reason) (increase(farm_post_failures_total[{RATE}]))", "{{deliverable}} {{reason}}"),
        ], description="The job's post.failures (farm status JOB) names the items and what happened."),
    ]


def per_tier() -> dict:
    t = 'tier="$tier"'
    panels = [
        _panel("Videos per minute", [(f'sum(rate(farm_items_total{{outcome="succeeded",{t}}}[{RATE}])) * 60', "videos/min")],
               width=8),
        _panel("Queue and in flight", [
            (f"sum(farm_queue_items{{{t}}})", "queued"),
            (f"sum(farm_items_in_flight{{{t}}})", "in flight"),
        ], width=8),
        _panel("Workers by state", [(f"sum by (state) (farm_workers{{{t}}})", "{{state}}")], width=8),
        _panel("Render time p50 / p95 by resolution", [
            (f"histogram_quantile(0.5, sum by (resolution, le) (rate(farm_render_seconds_bucket{{{t}}}[{RATE}])))", "p50 {{resolution}}p"),
            (f"histogram_quantile(0.95, sum by (resolution, le) (rate(farm_render_seconds_bucket{{{t}}}[{RATE}])))", "p95 {{resolution}}p"),
        ], unit="s"),
        _panel("Peak memory against the budget", [
            (f"histogram_quantile(0.95, sum by (le) (rate(farm_gpu_memory_peak_bytes_bucket{{{t}}}[{RATE}])))", "peak p95"),
            (f"max(farm_tier_budget_bytes{{{t}}})", "budget"),
        ], unit="bytes"),
        _panel("OOM errors per minute by resolution", [
            (f"sum by (resolution) (rate(farm_oom_total{{{t}}}[{RATE}])) * 60", "{{resolution}}p"),
        ]),
        _panel("Failures by reason", [(f"sum by (reason) (increase(farm_item_failures_total{{{t}}}[{RATE}]))", "{{reason}}")]),
        _panel("Device memory in use per worker", [
            (f"farm_gpu_memory_used_bytes{{{t}}} / farm_gpu_memory_total_bytes{{{t}}}", "{{worker}}"),
        ], unit="percentunit", width=24),
    ]
    return _dashboard("farm-tier", "farm / per tier", panels, tier=True)


DASHBOARDS = {"farm-overview.json": overview, "farm-tier.json": per_tier}


def render(name: str) -> str:
    return json.dumps(DASHBOARDS[name](), indent=2) + "\n"


def queries(dashboard: dict) -> list[tuple[str, str]]:
    """(panel title, PromQL) for every target of every panel (row headers have none)."""
    return [(panel["title"], target["expr"]) for panel in dashboard["panels"] for target in panel.get("targets", [])]


ROOT = Path(__file__).resolve().parent.parent
# dashboards/ for Grafana provisioning; a copy next to the Kubernetes monitoring component
# (kustomize only reads files below a kustomization's own folder).
OUTPUTS = (ROOT / "dashboards", ROOT / "k8s" / "components" / "monitoring" / "dashboards")


def main(argv: list[str]) -> int:
    folders = [Path(argv[0])] if argv else list(OUTPUTS)
    for folder in folders:
        folder.mkdir(parents=True, exist_ok=True)
        for name in DASHBOARDS:
            (folder / name).write_text(render(name))
            print(f"wrote {folder / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
