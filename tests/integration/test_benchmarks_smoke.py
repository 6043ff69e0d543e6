"""benchmarks/deliverables_throughput.py keeps working: its quick mode (a simulated GPU node of
sleep workers, farm's engine and CPU stage, real ffmpeg, one pair of runs) passes every check
and reports the figures it documents. The figures themselves are not judged here (a test
machine's load says nothing about them)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import subprocess_env

pytestmark = pytest.mark.integration

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "deliverables_throughput.py"


@pytest.mark.slow  # a Ray cluster of three nodes and real ffmpeg: in the slow suite (python3 dev.py test -m slow)
def test_deliverables_throughput_quick_passes_its_checks(tmp_path):
    raw = tmp_path / "raw.json"
    result = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--raw", str(raw)], check=False,
                            env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads(raw.read_text())
    runs = report["results"]
    assert [r["kind"] for r in runs] == ["without", "with"]
    assert all(all(r["checks"].values()) for r in runs), [r["checks"] for r in runs]
    without, with_ = runs
    assert with_["post"]["made"] == 3 * with_["items"] and with_["post"]["failed"] == 0
    assert without["post"]["made"] == 0
    assert all(r["throughput"] > 0 and r["render_s"] >= report["args"]["seconds_per_item"] for r in runs)
    assert with_["end_to_end_s"] >= with_["render_s"] and 0 <= with_["backlog_at_render_end"] <= with_["items"]
    assert len(report["summary"]["ratios"]) == 1 and report["summary"]["all_checks"]
    assert "median of the pairs" in result.stdout
