"""benchmarks/gpu_check.py keeps working: its dry run (the whole script on the CPU with the tiny
model) passes, and the figures it reports are computed as documented."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import subprocess_env

pytestmark = pytest.mark.integration

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_check.py"


def load_script():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow  # suite time: in the slow suite (python3 dev.py test -m slow)
def test_the_dry_run_passes_and_records_every_section(tmp_path):
    out = tmp_path / "out"
    result = subprocess.run([sys.executable, str(SCRIPT), "--dry-run", "--out", str(out)], env=subprocess_env(),
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    report = json.loads((out / "gpu_check.json").read_text())
    assert report["mode"] == "dry-run" and not report.get("errors") and not report.get("failures"), report
    assert not report["skipped"]

    load = report["load"]
    assert load["only_variant_files"] and load["weight_files"]
    assert {name: entry["weight_variant"] for name, entry in load["loads"].items()} == {"fp32": "fp16", "bf16": "fp16"}

    steps = report["steps"]
    assert {(s["precision"], s["width"], s["height"]) for s in steps} == {
        ("fp32", 256, 256), ("fp32", 448, 256), ("bf16", 256, 256), ("bf16", 448, 256)}
    assert all(s["timed_calls"] == 8 and s["seconds_per_step"] > 0 and s["decode_seconds"] > 0 for s in steps)

    levels = sorted({m["saver_level"] for m in report["memory"] if m["precision"] == "fp32"})
    assert levels == [0, 1, 2, 3]

    oom = report["oom"]
    assert oom["status"] == "succeeded" and len(oom["ooms"]) >= 1 and oom["final_settings"]["saver_level"] >= 1
    assert [d["step"] for d in oom["degradations"]] == ["memory_savers"] * len(oom["ooms"])

    e2e = report["end_to_end"]
    assert e2e["preset"] == "standard" and e2e["mp4_bytes"] > 0 and e2e["precision"] == "fp32"

    calibration = report["calibration"]  # CPU sidecars: nothing to calibrate from, said clearly
    assert calibration["exit_code"] == 2 and any("only sidecars of renders measured on CUDA" in line for line in calibration["output"])
    markdown = (out / "gpu_check.md").read_text()
    assert "## A real OOM climbs the ladder" in markdown and "| fp32 | 256x256x8 | 3 |" in markdown
    assert (out / "sidecars.tar.gz").stat().st_size > 0


def test_the_estimate_error_is_measured_against_cuda_peaks_only():
    gpu_check = load_script()
    memory = {
        "kind": "cuda",
        "phases": {"denoise": {"max_allocated_bytes": 10 * 2**30, "max_reserved_bytes": 11 * 2**30},
                   "decode": {"max_allocated_bytes": 8 * 2**30, "max_reserved_bytes": 9 * 2**30}},
        "estimate": {"total_bytes": 12 * 2**30, "overhead_bytes": 2**30, "denoise_bytes": 11 * 2**30, "decode_bytes": 7 * 2**30},
    }
    point = gpu_check.memory_point(memory, 512, 512, 16, 0, (), "bf16")
    assert point["estimate_error"] == pytest.approx(0.2)  # (12 - 10) / 10: the estimate is 20 % high
    assert point["estimate_denoise_bytes"] == 12 * 2**30
    cpu = dict(memory, kind="cpu", phases={"denoise": {"max_rss_bytes": 10}})
    assert gpu_check.memory_point(cpu, 512, 512, 16, 0, (), "fp32")["estimate_error"] is None


@pytest.mark.parametrize("name, peak", [
    ("NVIDIA H200", 989.4), ("NVIDIA H100 PCIe", 756.5), ("NVIDIA H100 80GB HBM3", 989.4), ("NVIDIA A100-SXM4-80GB", 312.0),
    ("NVIDIA A10G", 70.0), ("NVIDIA L40S", 362.1), ("NVIDIA L4", 121.0), ("NVIDIA GeForce RTX 4090", 165.2), ("Some New GPU", None),
])
def test_spec_peaks_match_the_longest_name(name, peak):
    assert load_script().spec_peak(name) == peak
