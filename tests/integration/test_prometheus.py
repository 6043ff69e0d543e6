"""A real Prometheus (Debian's package) scrapes `farm run --metrics-port` while it renders a job
with the tiny model on a simulated 24 GB card; then the job's series are checked and every
dashboard query is evaluated through Prometheus's HTTP API."""

import json
import shutil
import subprocess
import sys
import time
import urllib.parse
import urllib.request

import pytest

from conftest import subprocess_env
from farm.dashboards import DASHBOARDS, queries, render
from helpers import encode, free_port, pattern, write_manifest

pytestmark = pytest.mark.integration

ITEMS = 4
CORE_PANELS = ("Videos per minute", "Render time", "Peak memory")


def query(job, expr: str) -> dict:
    """Evaluate `expr` at a moment after the job ended but while the farm was still scraped
    (`--metrics-linger`): once the target is gone, Prometheus marks its series stale."""
    base, at = job
    url = f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": expr, "time": f"{at:.3f}"})
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.loads(response.read())


@pytest.fixture(scope="module")
def scraped_job(tmp_path_factory, tiny_model_dir):
    binary = shutil.which("prometheus")
    if not binary:
        pytest.skip("prometheus is missing (python3 dev.py test installs Debian's prometheus package)")
    work = tmp_path_factory.mktemp("prometheus")
    farm_port, prom_port = free_port(), free_port()
    (work / "prometheus.yml").write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        "scrape_configs:\n"
        f"  - job_name: farm\n    static_configs: [{{targets: ['127.0.0.1:{farm_port}']}}]\n"
    )
    prometheus = subprocess.Popen(
        [
            binary, f"--config.file={work / 'prometheus.yml'}", f"--storage.tsdb.path={work / 'data'}",
            f"--web.listen-address=127.0.0.1:{prom_port}", "--log.level=warn",
        ],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    base = f"http://127.0.0.1:{prom_port}"
    try:
        for _ in range(60):
            try:
                urllib.request.urlopen(f"{base}/-/ready", timeout=2)
                break
            except OSError:
                time.sleep(0.5)
        (work / "a.png").write_bytes(encode(pattern(300, 200), "PNG"))
        items = [{"id": f"m{n}", "image": "a.png", "prompt": f"motion {n}"} for n in range(ITEMS)]
        manifest = write_manifest(work, items, name="metrics")
        run = subprocess.run(
            [
                sys.executable, "-m", "farm", "run", str(manifest), "--output", str(work / "out"),
                "--metrics-port", str(farm_port), "--metrics-linger", "6",
            ],
            capture_output=True, text=True, timeout=600, env=subprocess_env(FARM_GPU_VRAM_GB="24"),
        )
        ended = time.time()
        assert run.returncode == 0, run.stderr[-3000:]
        yield base, ended - 3.0
    finally:
        prometheus.terminate()
        try:
            prometheus.wait(timeout=30)
        except subprocess.TimeoutExpired:
            prometheus.kill()


def value(result: dict) -> float:
    return float(result["data"]["result"][0]["value"][1])


def test_prometheus_holds_the_jobs_series_with_the_right_counts(scraped_job):
    assert value(query(scraped_job, "sum(farm_items_total)")) == ITEMS
    assert value(query(scraped_job, 'sum(farm_items_total{outcome="succeeded",tier="24g",model="tiny"})')) == ITEMS
    assert value(query(scraped_job, 'sum(farm_render_seconds_bucket{le="+Inf"})')) == ITEMS
    assert value(query(scraped_job, 'sum(farm_gpu_memory_peak_bytes_bucket{le="+Inf"})')) == ITEMS
    assert len(query(scraped_job, "farm_render_seconds_bucket")["data"]["result"]) > 5
    assert value(query(scraped_job, "sum(farm_frames_rendered_total)")) == ITEMS * 8
    peak = value(query(scraped_job, "farm_gpu_memory_peak_bytes_sum / farm_gpu_memory_peak_bytes_count"))
    assert 4e9 < peak < 24 * 2**30  # a simulated 24 GB card's figure, not the CPU process's
    assert value(query(scraped_job, 'farm_tier_budget_bytes{tier="24g"}')) == pytest.approx(21.8 * 2**30, rel=0.01)


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_every_dashboard_query_evaluates_and_the_core_panels_have_data(scraped_job, name):
    dashboard = json.loads(render(name))
    with_data: dict[str, bool] = {}
    for title, expr in queries(dashboard):
        promql = expr.replace("$__rate_interval", "5m").replace("$tier", "24g")
        result = query(scraped_job, promql)
        assert result["status"] == "success", (title, promql, result)
        samples = [float(r["value"][1]) for r in result["data"]["result"]]
        with_data[title] = with_data.get(title, False) or any(s == s for s in samples)  # s == s: not NaN
    core = {title: has for title, has in with_data.items() if title.startswith(CORE_PANELS)}
    assert len(core) >= 2 and all(core.values()), core
