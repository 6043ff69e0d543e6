"""A cancel reaches a Ray render actor while it renders (issue 20): `RenderWorker.cancel` runs in
its own concurrency group ("control") beside the render, which stops at its next denoise step;
every other call (info, render, ...) stays in the default group, one at a time, in order."""

import json

import pytest
from helpers import encode, pattern

from farm.core.contracts import RenderTask
from farm.core.manifest import parse_manifest

pytestmark = pytest.mark.integration
STEPS = 100  # the most a manifest allows: far more than the render gets through before the cancel comes


def tasks(tmp_path, *steps: int) -> list[RenderTask]:
    (tmp_path / "a.png").write_bytes(encode(pattern(320, 240), "PNG"))
    items = [{"id": f"i{n}", "image": "a.png", "prompt": "p", "resolution": 256, "frames": 8, "steps": count}
             for n, count in enumerate(steps)]
    document = {"version": 1, "name": "stop", "model": "tiny", "output": str(tmp_path / "out"), "items": items}
    spec = parse_manifest(json.dumps(document), "json", base_dir=tmp_path)
    return [RenderTask.for_item(spec, item, job_id="j-stop") for item in spec.items]


@pytest.mark.slow  # suite time: in the slow suite (python3 dev.py test -m slow)
def test_a_cancel_reaches_a_ray_worker_mid_render_and_the_worker_goes_on(tmp_path, ray_cluster):
    import time

    import ray

    from farm.runtime.engine import spawn_worker
    from farm.settings import FarmSettings

    long, short = tasks(tmp_path, STEPS, 10)
    worker = spawn_worker("tiny", "cancel-0", None, gpu=False, settings=FarmSettings(), cpu_threads=1, slot_tier="cpu")
    actor = worker.actor
    try:
        assert ray.get(actor.info.remote(), timeout=300)["ok"]
        render = actor.render.remote(long)
        time.sleep(3.0)  # well into its denoise
        info = actor.info.remote()  # the default group: waits for the render
        assert not ray.wait([info], timeout=0.5)[0], "info ran beside the render: the default group is not serial"
        sent = time.monotonic()
        assert ray.get(actor.cancel.remote("j-stop", "i0"), timeout=10) is True  # answered while the render runs
        reply = ray.get(render, timeout=120)
        stopped_s = time.monotonic() - sent
        (outcome,) = reply.outcomes
        assert outcome.status == "cancelled" and 0 <= outcome.steps_done < STEPS, outcome
        assert "item i0 was cancelled; stopped after denoise step" in outcome.message
        assert stopped_s < 30, f"the render took {stopped_s:.1f} s to stop"
        print(f"stopped after denoise step {outcome.steps_done} of {STEPS}, {stopped_s:.2f} s after the cancel")
        assert ray.get(info, timeout=30)["ok"]
        assert not list((tmp_path / "out" / "stop").glob("i0*")), "nothing was committed for the cancelled item"
        # The old request does not reach a later render: it renders and commits.
        finished = ray.get(actor.render.remote(short), timeout=300).outcomes
        finished += ray.get(actor.flush.remote(), timeout=300).outcomes  # its commit, if still uploading
        assert [(o.item_id, o.status) for o in finished] == [("i1", "succeeded")]
    finally:
        worker.handle.kill()
