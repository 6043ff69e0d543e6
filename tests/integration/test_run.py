"""Whole jobs on a real local Ray cluster bound to 127.0.0.1, in process and through the `farm` CLI."""

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import subprocess_env
from helpers import encode, noise, pattern, png_bomb, write_manifest
from commands import start
from processes import LOOPBACK_ADDRESSES, listening_addresses, own_processes, tree

from farm.media.video import probe_mp4
from farm.runtime.executor import RunOptions, run_job
from farm.storage.manifest_file import load_manifest

pytestmark = pytest.mark.integration


def farm(*args, cwd=None, timeout=600, **env):
    return subprocess.run(
        [sys.executable, "-m", "farm", *args], capture_output=True, text=True, cwd=cwd, env=subprocess_env(**env),
        timeout=timeout,
    )


RESULT_LABELS = r"(?:results|job record|video|thumbnail|sidecar|videos are in|tiny model): "


def printed_paths_exist(output: str) -> list[str]:
    """Every path a command printed as where its results are exists afterwards (and none is cut
    in two by line wrapping)."""
    paths = [p.rstrip(".,;:)") for p in re.findall(RESULT_LABELS + r"(\S+)", output)]
    missing = [p for p in paths if not Path(p).exists()]
    assert paths and not missing, f"printed but missing: {missing} (of {paths})"
    return paths


def test_ray_is_bound_to_loopback(ray_cluster):
    import ray

    assert ray_cluster.embedded
    assert ray.util.get_node_ip_address() == "127.0.0.1"
    assert all(node["NodeManagerAddress"] == "127.0.0.1" for node in ray.nodes())
    sockets = listening_addresses(own_processes())  # this session's Ray processes only
    assert any(name in ("gcs_server", "raylet") for _, _, name in sockets), sockets
    assert all(address in LOOPBACK_ADDRESSES for address, _, _ in sockets), sockets


def test_the_embedded_cluster_runs_no_idle_workers_next_to_the_renders(ray_cluster):
    """Ray pre-starts idle Python workers that farm never uses; each costs CPU beside torch."""
    import time

    time.sleep(2)  # Ray pre-starts (when enabled) right after the driver registers
    idle = [p.pid for p in own_processes("ray::IDLE")]
    assert not idle, f"idle Ray workers running: {idle}"


def test_a_job_with_good_and_bad_items_in_process(tmp_path, ray_cluster):
    (tmp_path / "good.png").write_bytes(encode(pattern(300, 200), "PNG"))
    (tmp_path / "corrupt.jpg").write_bytes(encode(noise(300, 300), "JPEG")[:3000])
    items = [
        {"id": "good", "image": "good.png", "prompt": "a"},
        {"id": "missing", "image": "nope.png", "prompt": "b"},
        {"id": "corrupt", "image": "corrupt.jpg", "prompt": "c"},
        {"id": "wide", "image": "good.png", "prompt": "d", "aspect": "16:9"},
        {"id": "invalid", "image": "good.png", "prompt": "e", "steps": 5},
    ]
    manifest = write_manifest(tmp_path, items, name="mixed", output=str(tmp_path / "out"))
    spec = load_manifest(manifest, skip_invalid=True)
    state = run_job(spec, RunOptions(record_interval_s=0))
    counts = state.counts()
    assert (counts["succeeded"], counts["failed"], counts["total"]) == (2, 3, 5)
    assert state.final_state == "partial"
    assert state.items["missing"].reason == "image_not_found"
    assert state.items["corrupt"].reason == "image_invalid"

    record = json.loads((tmp_path / "out" / "mixed" / "job.json").read_text())
    assert record["state"] == "partial" and record["counts"]["succeeded"] == 2
    assert record["items"]["missing"]["state"] == "failed" and "nope.png" in record["items"]["missing"]["message"]
    assert record["items"]["good"]["worker"] == "cpu-0"
    assert record["items"]["invalid"]["reason"] == "invalid_item" and "steps" in record["items"]["invalid"]["message"]
    assert list(record["workers"]) == ["cpu-0"] and record["workers"]["cpu-0"]["device"] == "cpu"
    assert probe_mp4(str(tmp_path / "out" / "mixed" / "wide.mp4")).width == 448


def test_two_workers_share_a_job(tmp_path, ray_cluster):
    (tmp_path / "a.png").write_bytes(encode(pattern(256, 256), "PNG"))
    items = [{"id": f"i{n}", "image": "a.png", "prompt": f"p{n}"} for n in range(4)]
    spec = load_manifest(write_manifest(tmp_path, items, name="pair", output=str(tmp_path / "out")))
    state = run_job(spec, RunOptions(workers=2, cpu_threads=1))
    assert state.final_state == "succeeded"
    used = {status.worker for status in state.items.values()}
    assert used == {"cpu-0", "cpu-1"}


def test_an_unavailable_model_stops_the_job_before_rendering(tmp_path, ray_cluster):
    (tmp_path / "a.png").write_bytes(encode(pattern(64, 64), "PNG"))
    spec = load_manifest(write_manifest(tmp_path, [{"image": "a.png", "prompt": "p"}], model=str(tmp_path)))
    from farm.core.errors import ModelUnavailableError

    with pytest.raises(ModelUnavailableError, match="no model_index.json"):
        run_job(spec, RunOptions())


@pytest.mark.slow  # suite time: in the slow suite (python3 dev.py test -m slow)
def test_farm_run_with_three_bad_items_renders_the_rest_and_exits_1(tmp_path, tiny_model_dir):
    """Good items (two aspects, an odd frame count) and 3 bad ones (missing file, corrupt image,
    decompression bomb): the bad ones fail with their reason, the others render."""
    for n, size in enumerate([(640, 480), (480, 640), (512, 512), (1000, 300)]):
        (tmp_path / f"img{n}.png").write_bytes(encode(pattern(*size), "PNG"))
    (tmp_path / "corrupt.jpg").write_bytes(encode(noise(400, 400), "JPEG")[:5000])
    (tmp_path / "bomb.png").write_bytes(png_bomb())
    items = [{"id": f"good-{n:02d}", "image": f"img{n % 4}.png", "prompt": f"motion {n}"} for n in range(5)]
    items[1]["aspect"] = "16:9"
    items[2]["aspect"] = "9:16"
    items[4]["frames"] = 9
    items += [
        {"id": "missing", "image": "does-not-exist.png", "prompt": "x"},
        {"id": "corrupt", "image": "corrupt.jpg", "prompt": "x"},
        {"id": "bomb", "image": "bomb.png", "prompt": "x"},
    ]
    manifest = write_manifest(tmp_path, items, name="mixed")
    result = farm("run", str(manifest), "--output", "out/", cwd=tmp_path)  # relative, with a trailing slash
    assert result.returncode == 1, result.stderr[-3000:]
    assert f"results: {tmp_path / 'out' / 'mixed'}   job record:" in result.stdout
    assert printed_paths_exist(result.stdout)
    assert not re.search(r"\d{4,}\.\d/min", result.stdout + result.stderr)  # no rate from the instant failures

    folder = tmp_path / "out" / "mixed"
    videos = sorted(p.stem for p in folder.glob("*.mp4"))
    assert videos == [f"good-{n:02d}" for n in range(5)]
    for stem in videos:
        assert (folder / f"{stem}.jpg").is_file() and (folder / f"{stem}.json").is_file()
    assert probe_mp4(str(folder / "good-04.mp4")).frames == 9
    record = json.loads((folder / "job.json").read_text())
    assert record["counts"]["succeeded"] == 5 and record["counts"]["failed"] == 3
    reasons = {key: record["items"][key]["reason"] for key in ("missing", "corrupt", "bomb")}
    assert reasons == {"missing": "image_not_found", "corrupt": "image_invalid", "bomb": "image_too_large"}
    summary = result.stdout
    for needle in ("failed items", "missing", "image_not_found", "corrupt", "bomb", "image_too_large"):
        assert needle in summary


def test_farm_run_rejects_an_invalid_manifest_with_every_error_and_renders_nothing(tmp_path):
    (tmp_path / "a.png").write_bytes(encode(pattern(64, 64), "PNG"))
    items = [
        {"id": "a", "image": "a.png", "prompt": "p", "frames": 64},
        {"id": "b", "image": "a.png", "prompt": "p", "motion": "fast"},
    ]
    manifest = write_manifest(tmp_path, items)
    result = farm("run", str(manifest), "--output", str(tmp_path / "out"))
    assert result.returncode == 2
    assert "items[0] (id 'a'), field 'frames': 64 is not allowed" in result.stderr
    assert "items[1] (id 'b'), field 'motion': unknown field 'motion'" in result.stderr
    assert "nothing was rendered" in result.stderr
    assert not (tmp_path / "out").exists()
    assert "Traceback" not in result.stderr


def test_farm_demo_ends_with_playable_videos_matching_the_request(tmp_path, tiny_model_dir):
    demo = start(["demo", "--output", str(tmp_path / "demo")], tmp_path)
    sockets = set()
    while demo.poll() is None:  # what its embedded cluster listens on, while it runs
        sockets |= set(listening_addresses(tree(demo.pid)))
        time.sleep(0.5)
    stdout, stderr = demo.communicate()
    assert demo.returncode == 0, stderr[-3000:]
    assert any(name == "raylet" for _, _, name in sockets)
    assert all(address in LOOPBACK_ADDRESSES for address, _, _ in sockets), sockets
    assert "random weights" in stdout and "--model" in stdout
    printed_paths_exist(stdout)
    folder = tmp_path / "demo" / "demo"
    sidecars = sorted(p for p in folder.glob("*.json") if p.name not in ("job.json", "spec.json"))
    assert len(sidecars) == 5
    for path in sidecars:
        sidecar = json.loads(path.read_text())
        effective = sidecar["effective"]
        info = probe_mp4(str(path.with_suffix(".mp4")))
        assert (info.codec, info.pix_fmt) == ("h264", "yuv420p")
        assert (info.width, info.height) == (effective["width"], effective["height"])
        assert info.frames == effective["frames"] and info.fps == effective["fps"]
        assert path.with_suffix(".jpg").is_file()
    assert json.loads((folder / "job.json").read_text())["state"] == "succeeded"


def test_farm_validate(tmp_path):
    good = write_manifest(tmp_path, [{"id": "a", "image": "a.png", "prompt": "p"}])
    result = farm("validate", str(good))
    assert result.returncode == 2 and "items[0] (id 'a'), field 'image': image file not found" in result.stderr
    (tmp_path / "a.png").write_bytes(encode(pattern(64, 64), "PNG"))
    result = farm("validate", str(good))
    assert result.returncode == 0 and "valid, 1 items" in result.stdout
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"version": 1, "items": [{"image": "a.png", "prompt": "p", "steps": 1000}]}))
    result = farm("validate", str(bad), "--json")
    assert result.returncode == 2
    errors = json.loads(result.stdout)["errors"]
    assert errors[0]["field"] == "steps" and errors[0]["value"] == 1000 and errors[0]["item_index"] == 0


def test_farm_render_one_image(tmp_path, tiny_model_dir):
    image = tmp_path / "still.webp"
    image.write_bytes(encode(pattern(500, 300), "WEBP"))
    target = tmp_path / "clips" / "still.mp4"
    result = farm(
        "render", str(image), "--prompt", "a slow pan", "--model", "tiny", "--preset", "quick",
        "--resolution", "256", "--steps", "10", "--aspect", "16:9", "-o", str(target),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    info = probe_mp4(str(target))
    assert (info.width, info.height, info.frames, info.fps) == (448, 256, 8, 8)
    sidecar = json.loads(target.with_suffix(".json").read_text())
    assert sidecar["requested"] == {} and sidecar["effective"]["steps"] == 10
    assert target.with_suffix(".jpg").is_file()
    assert not any(p.name.startswith(".farm-render") for p in target.parent.iterdir())
    assert str(target) in printed_paths_exist(result.stdout + result.stderr)  # not the deleted staging folder
    missing = farm("render", str(tmp_path / "nope.png"), "--prompt", "p", "--model", "tiny")
    assert missing.returncode == 2 and "nope.png: not found; check the path" in missing.stderr
    assert "manifest" not in missing.stderr


@pytest.mark.slow  # suite time: in the slow suite (python3 dev.py test -m slow)
def test_a_folder_named_farm_is_not_imported_and_a_worker_that_cannot_start_exits_3(tmp_path, tiny_model_dir):
    """Ray puts the driver's folder on the workers' import path; farm starts Ray elsewhere. A
    worker that cannot start (here: a broken package put on its path on purpose) is exit 3 with
    the node and the cause, not a traceback."""
    (tmp_path / "farm").mkdir()
    (tmp_path / "farm" / "__init__.py").write_text("raise ImportError('not the farm you are looking for')\n")
    (tmp_path / "still.png").write_bytes(encode(pattern(320, 240), "PNG"))
    manifest = write_manifest(tmp_path, [{"id": "a", "image": "still.png", "prompt": "p"}], name="shadow",
                              defaults={"resolution": 256, "frames": 8, "steps": 10})
    console_script = Path(sys.executable).parent / "farm"  # as a user runs it (`python -m` would import ./farm)

    def run(**env):
        return subprocess.run([str(console_script), "run", manifest.name, "--output", "out"], cwd=tmp_path,
                              capture_output=True, text=True, env=subprocess_env(**env), timeout=600)

    shadowed = run()
    assert shadowed.returncode == 0, shadowed.stderr[-3000:]
    assert (tmp_path / "out" / "shadow" / "a.mp4").is_file()
    broken = run(FARM_WORKER_PYTHONPATH=str(tmp_path))
    assert broken.returncode == 3, broken.stderr[-3000:]
    assert "render worker cpu-0 on node 127.0.0.1 could not start: ImportError: not the farm you are looking for" in broken.stderr
    assert "Traceback" not in broken.stderr


def test_farm_render_with_unavailable_weights_explains_without_a_traceback(tmp_path):
    image = tmp_path / "still.png"
    image.write_bytes(encode(pattern(64, 64), "PNG"))
    result = farm("render", str(image), "--prompt", "p", "--model", "ali-vilab/i2vgen-xl", "-o", str(tmp_path / "o.mp4"))
    assert result.returncode == 3
    assert "HF_HUB_OFFLINE" in result.stderr and "--model DIR" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_rerun_to_a_local_folder_touches_nothing_and_redoes_only_what_is_damaged_or_changed(tmp_path, ray_cluster):
    import hashlib
    import os

    (tmp_path / "a.png").write_bytes(encode(pattern(256, 256), "PNG"))
    items = [{"id": f"i{n}", "image": "a.png", "prompt": f"p{n}"} for n in range(2)]
    spec = load_manifest(write_manifest(tmp_path, items, name="again", output=str(tmp_path / "out")))
    assert run_job(spec, RunOptions()).counts()["succeeded"] == 2
    folder = tmp_path / "out" / "again"

    def files(prefix: str = "") -> dict:
        return {p.name: (p.stat().st_mtime_ns, p.stat().st_size) for p in folder.iterdir() if p.name.startswith(prefix)}

    before = files()
    state = run_job(spec, RunOptions())
    assert state.counts()["skipped"] == 2 and state.counts()["succeeded"] == 0 and state.final_state == "succeeded"
    assert files() == before

    # i1's video damaged in place, same size and mtime: only the sidecar's sha256 can tell.
    untouched, old = files("i0"), json.loads((folder / "i1.json").read_text())
    video = folder / "i1.mp4"
    stat, data = video.stat(), bytearray(video.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 64] = bytes(b ^ 0xFF for b in data[middle : middle + 64])
    video.write_bytes(bytes(data))
    os.utime(video, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    state = run_job(spec, RunOptions())
    assert (state.counts()["succeeded"], state.counts()["skipped"]) == (1, 1) and state.items["i1"].state == "succeeded"
    new = json.loads((folder / "i1.json").read_text())
    assert new["commit"]["token"] != old["commit"]["token"], "i1 was committed again"
    fixed = video.read_bytes()
    assert fixed[4:8] == b"ftyp" and hashlib.sha256(fixed).hexdigest() == new["outputs"]["sha256"]["video"]
    assert probe_mp4(str(video)).frames == new["outputs"]["frames"]
    assert files("i0") == untouched and len(untouched) == 3, "the intact item was skipped and left alone"

    (tmp_path / "a.png").write_bytes(encode(pattern(256, 250), "PNG"))  # the image changes: both redo
    assert run_job(spec, RunOptions()).counts()["succeeded"] == 2
    assert run_job(spec, RunOptions(force=True)).counts()["succeeded"] == 2  # --force renders all again
