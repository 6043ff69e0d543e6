"""One item through the real path: preprocess, tiny I2VGen-XL, H.264 encode, commit to the store."""

import hashlib
import json

import pytest
from helpers import FAST, encode, noise, pattern
from PIL import Image

from farm.core.job import FAILED, SUCCEEDED, RenderTask
from farm.core.manifest import parse_manifest
from farm.media.video import probe_mp4
from farm.renderer import ItemRenderer

pytestmark = pytest.mark.integration


def task_for(tmp_path, image_name, **params):
    document = {
        "version": 1,
        "name": "renders",
        "model": "tiny",
        "output": str(tmp_path / "out"),
        "defaults": {**FAST, **params},
        "items": [{"id": "clip", "image": image_name, "prompt": "waves rolling in, camera panning right"}],
    }
    spec = parse_manifest(json.dumps(document), "json", base_dir=tmp_path)
    return RenderTask.for_item(spec, spec.items[0])


@pytest.mark.parametrize(
    "params, size",
    [({"aspect": "16:9"}, (448, 256)), ({"frames": 12, "fps": 6, "aspect": "9:16"}, (256, 448))],
)
def test_render_decodes_back_with_the_requested_frames_size_and_fps(tmp_path, tiny_adapter, params, size):
    source = tmp_path / "photo.jpg"
    source.write_bytes(encode(pattern(640, 480), "JPEG"))
    task = task_for(tmp_path, "photo.jpg", **params)
    outcome = ItemRenderer(tiny_adapter, worker_name="test").render(task)
    assert outcome.status == SUCCEEDED, outcome.message

    folder = tmp_path / "out" / "renders"
    info = probe_mp4(str(folder / "clip.mp4"))
    frames = params.get("frames", FAST["frames"])
    fps = params.get("fps", FAST["fps"])
    assert (info.codec, info.pix_fmt) == ("h264", "yuv420p")
    assert (info.width, info.height) == size
    assert info.frames == frames and info.fps == fps
    assert abs(info.duration_s - frames / fps) < 0.01
    data = (folder / "clip.mp4").read_bytes()
    assert data.index(b"moov") < data.index(b"mdat"), "faststart: playable while downloading"

    with Image.open(folder / "clip.jpg") as thumb:
        assert thumb.format == "JPEG" and thumb.size == size

    sidecar = json.loads((folder / "clip.json").read_text())
    assert sidecar["status"] == "succeeded" and sidecar["item_id"] == "clip"
    assert sidecar["requested"] == {}  # everything came from the job defaults
    effective = sidecar["effective"]
    assert (effective["width"], effective["height"], effective["frames"], effective["fps"]) == (*size, frames, fps)
    assert sidecar["seed"] == task.seed == effective["seed"]
    assert sidecar["model"]["id"] == "tiny" and len(sidecar["model"]["config_sha256"]) == 64
    assert sidecar["input"]["sha256"] == hashlib.sha256(source.read_bytes()).hexdigest()
    assert sidecar["device"]["type"] == "cpu"
    assert set(sidecar["timings_seconds"]) >= {"load", "preprocess", "denoise", "decode", "encode", "total"}
    assert sidecar["peak_memory_bytes"] > 0 and sidecar["farm_version"]
    assert sidecar["outputs"]["frames"] == frames and sidecar["outputs"]["video_bytes"] == len(data)
    assert sidecar["warnings"] == []


def test_small_sources_render_with_a_warning_in_the_sidecar(tmp_path, tiny_adapter):
    (tmp_path / "small.png").write_bytes(encode(pattern(100, 100), "PNG"))
    outcome = ItemRenderer(tiny_adapter).render(task_for(tmp_path, "small.png"))
    assert outcome.status == SUCCEEDED
    sidecar = json.loads((tmp_path / "out" / "renders" / "clip.json").read_text())
    assert any("smaller than the target 256x256" in w for w in sidecar["warnings"])
    assert outcome.warnings == sidecar["warnings"]


@pytest.mark.parametrize(
    "content, reason",
    [(None, "image_not_found"), (b"", "image_invalid"), (b"GIF89a" + b"\0" * 50, "image_invalid")],
)
def test_bad_images_fail_the_item_and_write_nothing(tmp_path, tiny_adapter, content, reason):
    if content is not None:
        (tmp_path / "bad.png").write_bytes(content)
    outcome = ItemRenderer(tiny_adapter).render(task_for(tmp_path, "bad.png"))
    assert outcome.status == FAILED and outcome.reason == reason
    assert "bad.png" in outcome.message
    assert not (tmp_path / "out" / "renders").exists()


def test_a_truncated_image_fails_cleanly_and_the_renderer_keeps_working(tmp_path, tiny_adapter):
    renderer = ItemRenderer(tiny_adapter)
    (tmp_path / "cut.jpg").write_bytes(encode(noise(300, 300), "JPEG")[:4000])
    assert renderer.render(task_for(tmp_path, "cut.jpg")).reason == "image_invalid"
    (tmp_path / "fine.png").write_bytes(encode(pattern(300, 300), "PNG"))
    assert renderer.render(task_for(tmp_path, "fine.png")).status == SUCCEEDED
