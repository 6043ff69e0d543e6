"""`farm calibrate`: the estimator's constants fitted to measured peaks, the calibration file,
and the plans that use it.

Sidecars are synthetic, written in the real layout (OUTPUT/JOB/ITEM.json) with peaks from the
estimator's own formula at chosen constants, so the fit must give those constants back.
"""

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from farm.cli import main
from farm.core.calibration import RULE, CalibrationFile, NotEnoughMeasurements, fit
from farm.core.planner import plan_job
from farm.core.tiers import ClusterShape, TierTable
from farm.core.vram import CALIBRATION_ENV, GIB, SAVER_LEVELS, estimate_vram, profile_for_model
from farm.core.vram import I2VGENXL_PROFILE as P
from farm.models.calibration_file import CalibrationFileError, load_calibration

# The "true" constants the synthetic GPU follows, all away from the built-in ones.
TRUTH = {"overhead_bytes": int(0.93 * GIB), "workspace_factor": 1.45, "decode_workspace_factor": 1.12}
TRUE_PROFILE = replace(P, **TRUTH)
# (width, height, frames, saver level): 256..1024, 8..32 frames, every saver level.
SHAPES = [
    (256, 256, 8, 0), (256, 256, 32, 1), (448, 256, 16, 0), (512, 512, 8, 0), (512, 512, 16, 0),
    (512, 512, 24, 1), (512, 512, 32, 2), (768, 768, 8, 0), (768, 768, 16, 1), (768, 768, 24, 2),
    (1024, 576, 16, 0), (1024, 1024, 8, 1), (1024, 1024, 16, 2), (1024, 1024, 32, 3), (768, 432, 32, 0),
    (1024, 1024, 24, 2),
]


def sidecar(item_id, width, height, frames, level, *, truth=TRUE_PROFILE, kind="cuda", gpu="NVIDIA H200",
            phases=("denoise", "decode"), noise=0.0, model_id="ali-vilab/i2vgen-xl", with_memory=True):
    savers = list(SAVER_LEVELS[level])
    estimate = estimate_vram(truth, width, height, frames, savers=savers)
    document = {
        "status": "succeeded",
        "item_id": item_id,
        "effective": {"resolution": min(width, height), "width": width, "height": height, "frames": frames,
                      "steps": 25, "guidance_scale": 9.0, "memory_savers": savers},
        "model": {"id": model_id, "family": "i2vgen-xl", "dtype": "float16"},
    }
    if with_memory:
        document["memory"] = {
            "kind": kind,
            "gpu_name": gpu if kind == "cuda" else None,
            "dtype_bytes": 2,
            "savers": savers,
            "baseline_allocated_bytes": P.total_params * 2,
            "phases": {
                phase: {"max_allocated_bytes": int(estimate.phase_peak_bytes(phase) * (1 + noise)),
                        "max_reserved_bytes": int(estimate.phase_peak_bytes(phase) * 1.1)}
                for phase in phases
            },
            "estimate": {"total_bytes": estimate.total_bytes},
        }
    return document


def write_job(output: Path, name: str, sidecars: list[dict]) -> Path:
    """A job folder in the real layout: ITEM.json sidecars (with their videos) and the job files."""
    job = output / name
    job.mkdir(parents=True, exist_ok=True)
    (job / "job.json").write_text(json.dumps({"name": name}))
    (job / "spec.json").write_text(json.dumps({"name": name, "items": []}))
    for document in sidecars:
        (job / f"{document['item_id']}.json").write_text(json.dumps(document))
        (job / f"{document['item_id']}.mp4").write_bytes(b"\0")
    return job


def synthetic(noise: float = 0.0, **kwargs) -> list[dict]:
    rng = np.random.default_rng(7)
    return [
        sidecar(f"i{index}", w, h, f, level, noise=float(rng.uniform(-noise, noise)), **kwargs)
        for index, (w, h, f, level) in enumerate(SHAPES)
    ]


def calibrate(*args, capsys) -> tuple[int, str, str]:
    code = main(["calibrate", *map(str, args)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_recovers(entry: dict, tolerance: float = 0.02) -> None:
    for name, value in TRUTH.items():
        assert entry[name] == pytest.approx(value, rel=tolerance), (name, entry[name], value)


# --- the fit ----------------------------------------------------------------------------------


def measurements(documents, source="job"):
    from farm.models.calibration_file import measurement_from_sidecar

    return [measurement_from_sidecar(d, source) for d in documents]


def test_fit_recovers_the_constants_exactly_from_exact_peaks():
    entry = fit(P, measurements(synthetic()))
    assert_recovers(entry.model_dump(), tolerance=1e-6)
    assert entry.median_error < 1e-6 and abs(entry.worst_error) < 1e-6
    assert entry.points == entry.denoise_points == entry.decode_points == len(SHAPES)
    assert entry.before.median_error > 0.03  # the built-in constants were off for this "GPU"


def test_fit_recovers_the_constants_within_2_percent_from_noisy_peaks():
    entry = fit(P, measurements(synthetic(noise=0.005)))  # peaks off by up to 0.5%
    assert_recovers(entry.model_dump())
    assert entry.median_error < 0.005 and abs(entry.worst_error) < 0.01


def test_fit_refuses_too_few_points_and_says_what_is_missing():
    few = measurements([sidecar("a", 512, 512, 16, 0), sidecar("b", 768, 768, 16, 0, phases=("denoise",))])
    with pytest.raises(NotEnoughMeasurements) as raised:
        fit(P, few)
    message = str(raised.value)
    assert "i2vgen-xl on 'NVIDIA H200'" in message
    assert "denoise: 2 measurement(s) at 2 size(s), needs 3" in message
    assert "decode: 1 measurement(s) at 1 size(s), needs 3" in message
    one_size = measurements([sidecar(f"s{i}", 512, 512, 16, 0) for i in range(5)])
    with pytest.raises(NotEnoughMeasurements, match="denoise: 5 measurement.s. at 1 size.s., needs 3 at 2 or more"):
        fit(P, one_size)


def test_fit_refuses_measurements_the_formula_cannot_explain():
    documents = synthetic()
    for document in documents:  # peaks that fall as the render grows
        for phase in document["memory"]["phases"].values():
            phase["max_allocated_bytes"] = int(80 * GIB - phase["max_allocated_bytes"])
    with pytest.raises(NotEnoughMeasurements, match="do not follow the estimator's form"):
        fit(P, measurements(documents))


def test_missing_phases_use_those_present():
    documents = synthetic()
    for document in documents[::3]:
        del document["memory"]["phases"]["decode"]
    entry = fit(P, measurements(documents))
    assert_recovers(entry.model_dump(), tolerance=1e-6)
    assert entry.decode_points == len(SHAPES) - len(documents[::3])


# --- the estimator's separate factors ---------------------------------------------------------


def test_decode_factor_defaults_to_the_denoise_one_and_changes_only_the_decode():
    assert P.decode_workspace_factor is None and P.decode_factor == P.workspace_factor
    same = replace(P, decode_workspace_factor=P.workspace_factor)
    assert estimate_vram(same, 1024, 1024, 16) == estimate_vram(P, 1024, 1024, 16)
    lower = estimate_vram(replace(P, decode_workspace_factor=0.5), 1024, 1024, 16)
    base = estimate_vram(P, 1024, 1024, 16)
    assert lower.denoise_bytes == base.denoise_bytes and lower.decode_bytes < base.decode_bytes
    assert base.phase_peak_bytes("denoise") == base.overhead_bytes + base.denoise_bytes
    assert max(base.phase_peak_bytes(p) for p in ("denoise", "decode")) == base.total_bytes


# --- the command ------------------------------------------------------------------------------


def test_calibrate_recovers_the_constants_from_an_output_root(tmp_path, capsys):
    write_job(tmp_path / "out", "spring", synthetic(noise=0.005)[:9])
    write_job(tmp_path / "out", "summer", synthetic(noise=0.005)[9:])
    target = tmp_path / "cal.json"
    code, out, err = calibrate(tmp_path / "out", "--output", target, capsys=capsys)
    assert code == 0, err
    document = json.loads(target.read_text())
    assert document["version"] == 1 and document["created_at"]
    (entry,) = document["entries"]
    assert_recovers(entry)
    assert entry["family"] == "i2vgen-xl" and entry["gpu_name"] == "NVIDIA H200" and entry["points"] == len(SHAPES)
    assert entry["sources"] == [str(tmp_path / "out" / "spring"), str(tmp_path / "out" / "summer")]
    assert f"read {len(SHAPES)} sidecar(s) of 2 job(s): {len(SHAPES)} CUDA measurement(s)" in out
    assert "i2vgen-xl on NVIDIA H200: 16 render(s) (16 denoise, 16 decode measurements)" in out
    assert "error of the estimated peak vs measured: built-in median" in out and "-> calibrated median 0." in out
    assert f"wrote {target}" in out and f"{CALIBRATION_ENV}={target}" in out


def test_calibrate_reads_job_folders_and_skips_what_was_not_measured_on_cuda(tmp_path, capsys, monkeypatch):
    # Readings that do not count, each wildly off the truth: they must not move the fit.
    off = replace(P, overhead_bytes=20 * GIB)
    others = [
        sidecar("sim1", 512, 512, 16, 0, kind="simulated", truth=off),
        sidecar("sim2", 768, 768, 16, 0, kind="simulated", truth=off),
        sidecar("cpu", 512, 512, 16, 0, kind="cpu", truth=off),
        sidecar("old", 512, 512, 16, 0, with_memory=False),
        sidecar("tiny", 512, 512, 16, 0, model_id="tiny", truth=off),
    ]
    job = write_job(tmp_path / "out", "mixed", synthetic() + others)
    monkeypatch.chdir(tmp_path)
    code, out, err = calibrate(job, capsys=capsys)
    assert code == 0, err
    assert_recovers(json.loads((tmp_path / "vram-calibration.json").read_text())["entries"][0], tolerance=1e-6)
    assert f"read {len(SHAPES) + 5} sidecar(s) of 1 job(s): {len(SHAPES)} CUDA measurement(s)" in out
    assert "skipped 2 not measured on CUDA (kind simulated)" in out
    assert "skipped 1 not measured on CUDA (kind cpu)" in out
    assert "skipped 1 without a memory section" in out
    assert "skipped 1 of the tiny model" in out
    assert f"wrote {tmp_path / 'vram-calibration.json'}" in out


def test_calibrate_refuses_too_few_points_with_exit_2_and_writes_nothing(tmp_path, capsys):
    job = write_job(tmp_path / "out", "few", [sidecar("a", 512, 512, 16, 0), sidecar("b", 768, 768, 24, 1)])
    target = tmp_path / "cal.json"
    code, out, err = calibrate(job, "--output", target, capsys=capsys)
    assert code == 2
    assert "error: too few CUDA measurements to calibrate i2vgen-xl on 'NVIDIA H200'" in err
    assert "denoise: 2 measurement(s) at 2 size(s), needs 3 at 2 or more sizes" in err
    assert f"the rule: {RULE}" in err and "run `farm calibrate` again" in err
    assert "nothing written" in err and not target.exists()


def test_calibrate_refuses_outputs_without_cuda_measurements(tmp_path, capsys):
    job = write_job(tmp_path / "out", "sim", [sidecar(f"s{i}", 512, 512, 8 * (i + 1), 0, kind="simulated") for i in range(4)])
    code, out, err = calibrate(job, "--output", tmp_path / "cal.json", capsys=capsys)
    assert code == 2
    assert "skipped 4 not measured on CUDA (kind simulated)" in out
    assert "only sidecars of renders measured on CUDA GPUs count" in err
    code, out, err = calibrate(tmp_path / "nowhere", "--output", tmp_path / "cal.json", capsys=capsys)
    assert code == 2 and f"warning: no sidecars under {tmp_path / 'nowhere'}" in err


def test_calibrate_fits_each_gpu_and_keeps_the_others_when_one_has_too_few(tmp_path, capsys):
    small = replace(TRUE_PROFILE, overhead_bytes=int(0.6 * GIB), workspace_factor=1.2)
    write_job(tmp_path / "out", "h200", synthetic())
    write_job(tmp_path / "out", "l4", [sidecar(f"l{i}", w, h, f, lv, truth=small, gpu="NVIDIA L4")
                                       for i, (w, h, f, lv) in enumerate(SHAPES[:6])])
    write_job(tmp_path / "out", "a10", [sidecar("x", 512, 512, 16, 0, gpu="NVIDIA A10G")])
    code, out, err = calibrate(tmp_path / "out", "--output", tmp_path / "cal.json", capsys=capsys)
    assert code == 0, err
    assert "not calibrated: too few CUDA measurements to calibrate i2vgen-xl on 'NVIDIA A10G'" in err
    entries = {e["gpu_name"]: e for e in json.loads((tmp_path / "cal.json").read_text())["entries"]}
    assert set(entries) == {"NVIDIA H200", "NVIDIA L4"}
    assert entries["NVIDIA L4"]["overhead_bytes"] == pytest.approx(0.6 * GIB, rel=1e-6)


def test_calibrate_as_a_command(tmp_path):
    job = write_job(tmp_path / "out", "spring", synthetic())
    result = subprocess.run(
        [sys.executable, "-m", "farm", "calibrate", str(job), "--output", str(tmp_path / "c.json")],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert_recovers(json.loads((tmp_path / "c.json").read_text())["entries"][0], tolerance=1e-6)


# --- the file and the setting -----------------------------------------------------------------


def write_calibration(path: Path, *entries: dict) -> Path:
    base = {"family": "i2vgen-xl", "gpu_name": "NVIDIA H200", "workspace_factor": 1.31, "decode_workspace_factor": 1.31,
            "overhead_bytes": int(0.75 * GIB), "points": 10, "denoise_points": 10, "decode_points": 10,
            "median_error": 0.01, "worst_error": 0.02}
    document = {"version": 1, "created_at": "2026-12-02T10:00:00Z", "entries": [{**base, **e} for e in entries]}
    path.write_text(json.dumps(document))
    return path


def test_profile_without_the_setting_is_the_built_in_one():
    assert profile_for_model("ali-vilab/i2vgen-xl") is P
    assert profile_for_model("tiny", gpu_name="NVIDIA H200") is P


def test_profile_per_gpu_and_the_most_conservative_without_one(tmp_path, monkeypatch):
    path = write_calibration(
        tmp_path / "c.json",
        {"gpu_name": "NVIDIA H200", "overhead_bytes": 1 * GIB, "workspace_factor": 1.2, "decode_workspace_factor": 1.5},
        {"gpu_name": "NVIDIA L4", "overhead_bytes": GIB // 2, "workspace_factor": 1.4, "decode_workspace_factor": 1.0},
    )
    h200 = profile_for_model("ali-vilab/i2vgen-xl", gpu_name="NVIDIA H200", calibration=str(path))
    l4 = profile_for_model("ali-vilab/i2vgen-xl", "NVIDIA L4", str(path))
    assert (h200.overhead_bytes, h200.workspace_factor, h200.decode_workspace_factor) == (GIB, 1.2, 1.5)
    assert h200.calibration == f"{path}: NVIDIA H200" and l4.workspace_factor == 1.4
    planner = profile_for_model("ali-vilab/i2vgen-xl", calibration=str(path))  # no GPU named: never below any
    unknown = profile_for_model("ali-vilab/i2vgen-xl", gpu_name="NVIDIA B200", calibration=str(path))
    constants = (GIB, 1.4, 1.5)  # the largest of each
    assert (planner.overhead_bytes, planner.workspace_factor, planner.decode_workspace_factor) == constants
    assert (unknown.overhead_bytes, unknown.workspace_factor, unknown.decode_workspace_factor) == constants
    assert "the largest constants of NVIDIA H200, NVIDIA L4" in planner.calibration
    for w, h, f, level in SHAPES:
        savers = SAVER_LEVELS[level]
        worst = max(estimate_vram(p, w, h, f, savers=savers).total_bytes for p in (h200, l4))
        assert estimate_vram(planner, w, h, f, savers=savers).total_bytes >= worst


@pytest.mark.parametrize("change, field", [
    ({"workspace_factor": -1}, "field entries[0].workspace_factor: Input should be greater than 0 (got -1)"),
    ({"overhead_bytes": "lots"}, "field entries[0].overhead_bytes: Input should be a valid integer"),
    ({"colour": "blue"}, "field entries[0].colour: Extra inputs are not permitted"),
])
def test_a_malformed_file_names_the_file_and_the_field(tmp_path, monkeypatch, change, field):
    path = write_calibration(tmp_path / "bad.json", change)
    with pytest.raises(CalibrationFileError) as raised:
        profile_for_model("ali-vilab/i2vgen-xl", calibration=str(path))
    assert str(raised.value).startswith(f"calibration file {path}: ") and field in str(raised.value)


def test_file_errors_missing_not_json_wrong_version_duplicates(tmp_path):
    with pytest.raises(CalibrationFileError, match=f"{tmp_path / 'none.json'} .set by {CALIBRATION_ENV}. does not exist"):
        load_calibration(tmp_path / "none.json")
    (tmp_path / "text.json").write_text("entries: []")
    with pytest.raises(CalibrationFileError, match="text.json: not valid JSON"):
        load_calibration(tmp_path / "text.json")
    path = write_calibration(tmp_path / "v2.json", {})
    path.write_text(path.read_text().replace('"version": 1', '"version": 2'))
    with pytest.raises(CalibrationFileError, match="field version: Input should be 1 .got 2."):
        load_calibration(path)
    write_calibration(tmp_path / "dup.json", {}, {})
    with pytest.raises(CalibrationFileError, match="two entries for i2vgen-xl on 'NVIDIA H200'"):
        load_calibration(tmp_path / "dup.json")


def test_the_file_is_read_again_only_when_it_changes(tmp_path):
    path = write_calibration(tmp_path / "c.json", {})
    first = load_calibration(path)
    assert load_calibration(path) is first
    write_calibration(path, {"overhead_bytes": 2 * GIB, "gpu_name": "NVIDIA H200 NVL"})
    stat = os.stat(path)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # a new mtime even on coarse clocks
    again = load_calibration(path)
    assert again is not first and again.entries[0].overhead_bytes == 2 * GIB
    assert CalibrationFile.model_validate(json.loads(path.read_text())) == again


# --- plans use it ------------------------------------------------------------------------------


def plan_manifest(tmp_path: Path) -> Path:
    from PIL import Image

    Image.new("RGB", (64, 64), "red").save(tmp_path / "a.png")
    items = [{"id": "r512", "image": "a.png", "prompt": "p", "resolution": 512, "frames": 16},
             {"id": "r1024", "image": "a.png", "prompt": "p", "resolution": 1024, "frames": 24}]
    path = tmp_path / "m.json"
    path.write_text(json.dumps({"version": 1, "name": "plan", "model": "tiny", "items": items}))
    return path


def test_the_planner_uses_the_calibration_file(tmp_path, monkeypatch):
    from farm.storage.manifest_file import load_manifest

    spec = load_manifest(plan_manifest(tmp_path))
    shape, table = ClusterShape({"24g": 1, "80g": 1}), TierTable()
    before = {p.item_id: p.estimate.total_bytes for p in plan_job(spec, shape, table).items}
    calibration = str(write_calibration(tmp_path / "c.json", {"overhead_bytes": 3 * GIB}))
    after = {p.item_id: p.estimate.total_bytes for p in plan_job(spec, shape, table, calibration=calibration).items}
    assert all(after[i] - before[i] == 3 * GIB - P.overhead_bytes for i in before)


def test_farm_plan_and_tiers_use_the_calibration_file(tmp_path, monkeypatch, capsys):
    manifest = plan_manifest(tmp_path)
    monkeypatch.delenv(CALIBRATION_ENV, raising=False)
    assert main(["plan", str(manifest), "--json"]) == 0
    before = json.loads(capsys.readouterr().out)
    assert before["vram_calibration"] is None
    path = write_calibration(tmp_path / "c.json", {"overhead_bytes": 4 * GIB})
    monkeypatch.setenv(CALIBRATION_ENV, str(path))
    assert main(["plan", str(manifest), "--json"]) == 0
    after = json.loads(capsys.readouterr().out)
    for old, new in zip(before["items"], after["items"]):
        assert new["estimate_gib"] == pytest.approx(old["estimate_gib"] + 3.25, abs=0.011)
    assert after["vram_calibration"].startswith(str(path))
    assert main(["plan", str(manifest)]) == 0
    assert f"VRAM estimates calibrated by {path}: NVIDIA H200\n" in capsys.readouterr().out
    assert main(["tiers"]) == 0
    assert f"estimates for i2vgen-xl (calibrated by {path}" in capsys.readouterr().out


def test_farm_plan_and_tiers_refuse_a_malformed_calibration_file(tmp_path, monkeypatch, capsys):
    manifest = plan_manifest(tmp_path)
    monkeypatch.setenv(CALIBRATION_ENV, str(write_calibration(tmp_path / "bad.json", {"decode_workspace_factor": 0})))
    for args in (["plan", str(manifest)], ["tiers"]):
        assert main(args) == 2
        err = capsys.readouterr().err
        assert f"error: calibration file {tmp_path / 'bad.json'}: field entries[0].decode_workspace_factor" in err
