"""What the command line shows of a job: the status line of `farm status`, `farm jobs` and `farm
submit --wait` (with the job's deliverables when it has a `post`), the deliverable failures in the
final summary (item, deliverable, reason, message), the progress bar's words, and `farm run`'s
summary table."""

import argparse
import json
from pathlib import Path

from rich.console import Console

from farm.cli import output, remote
from farm.cli.output import _post_failure_lines, _post_summary, _print_status, _progress_info, _status_line
from farm.console import print_summary
from farm.core.job import POST_FAILURES_KEPT, JobState
from farm.core.manifest import parse_manifest

STATUS = {"id": "j1", "name": "spring", "state": "running", "output": "s3://out",
          "counts": {"total": 10, "succeeded": 6, "skipped": 1, "failed": 1}}


def post(**values) -> dict:
    return {"queued": 0, "running": 0, "made": 0, "skipped": 0, "failed": 0, "superseded": 0, "seconds": 0.0,
            "failures": [], **values}


FAILURE = {"item": "i3", "deliverable": "gif", "reason": "too_large",
           "message": "the gif is 9 MB, more than max_bytes (8 MB) after 3 attempts"}


def test_a_job_without_deliverables_keeps_its_status_line():
    assert _status_line(STATUS) == "j1  spring  running  7/10 done, 1 failed  -> s3://out"


def test_the_status_line_counts_the_deliverables():
    status = {**STATUS, "post": post(made=12, queued=3)}
    assert _status_line(status) == (
        "j1  spring  running  7/10 done, 1 failed  deliverables: 12 made, 0 failed, 3 queued  -> s3://out")


def test_running_skipped_and_superseded_deliverables_are_named_only_when_there_are_any():
    assert _post_summary(post(made=2, failed=1, queued=0)) == "deliverables: 2 made, 1 failed, 0 queued"
    assert _post_summary(post(made=2, queued=1, running=2, skipped=5, superseded=1)) == (
        "deliverables: 2 made, 0 failed, 1 queued, 2 running, 5 skipped, 1 superseded")
    assert _post_summary({}) == "deliverables: 0 made, 0 failed, 0 queued"  # an older record's partial post


def test_failures_are_listed_with_item_deliverable_reason_and_message():
    lines = _post_failure_lines(post(failed=1, failures=[FAILURE]))
    assert lines == ["deliverables that failed:",
                     "  i3  gif  too_large: the gif is 9 MB, more than max_bytes (8 MB) after 3 attempts"]
    assert _post_failure_lines(post(made=3)) == []


def test_a_long_or_multiline_message_stays_on_one_short_line():
    message = "ffmpeg exited with 1:\n[libx264 @ 0x55] broken\n" + "x" * 1000
    failure = {**FAILURE, "reason": "ffmpeg_error", "message": message}
    [_, line] = _post_failure_lines(post(failed=1, failures=[failure]))
    assert "\n" not in line and "ffmpeg exited with 1: [libx264 @ 0x55] broken" in line
    assert line.endswith("...") and len(line) < output.MESSAGE_CHARS + 40


def test_the_header_says_when_the_record_kept_only_the_last_failures():
    failures = [{**FAILURE, "item": f"i{n}"} for n in range(POST_FAILURES_KEPT)]
    lines = _post_failure_lines(post(failed=25, failures=failures))
    assert lines[0] == f"deliverables that failed (the last {POST_FAILURES_KEPT} of 25):"
    assert len(lines) == POST_FAILURES_KEPT + 1
    missing = _post_failure_lines(post(failed=1, failures=[{"item": "i1", "deliverable": "web"}]))
    assert missing[1] == "  i1  web  -: -"  # a failure without reason or message still prints


def test_print_status_lists_the_failures_only_when_asked(capsys):
    status = {**STATUS, "post": post(made=4, failed=1, failures=[FAILURE])}
    _print_status(status)
    assert capsys.readouterr().out == _status_line(status) + "\n"
    _print_status(status, failures=True)
    out = capsys.readouterr().out.splitlines()
    assert out[0] == _status_line(status) and "deliverables: 4 made, 1 failed, 0 queued" in out[0]
    assert out[1:] == _post_failure_lines(status["post"])


def test_the_progress_bar_says_what_is_left_to_make():
    status = {**STATUS, "items_per_minute": 2.0, "eta_seconds": 90.4}
    assert _progress_info(status) == "1 failed · 2.0/min · ETA 90s"
    status["post"] = post(made=5, failed=1, queued=2, running=1)
    assert _progress_info(status) == "1 failed · 2.0/min · ETA 90s · deliverables 5 made, 1 failed, 3 to make"


class FakeClient:
    def __init__(self, statuses: list[dict]):
        self.statuses = statuses

    def submit(self, manifest):
        return {"id": "j1", "status_url": "/v1/jobs/j1"}

    def events(self, job_id):
        for status in self.statuses:
            yield "status", status

    def status(self, job_id):
        return self.statuses[-1]


def test_submit_wait_ends_with_the_deliverables_and_their_failures(monkeypatch, capsys, tmp_path):
    running = {**STATUS, "post": post(made=1, queued=4)}
    final = {**STATUS, "state": "succeeded", "counts": {"total": 10, "succeeded": 10, "failed": 0},
             "post": post(made=19, failed=1, failures=[FAILURE])}
    monkeypatch.setattr(remote, "_client", lambda args: FakeClient([running, final]))
    code = remote.cmd_submit(argparse.Namespace(manifest=str(tmp_path / "m.yaml"), wait=True))
    out = capsys.readouterr().out.splitlines()
    assert code == 0
    assert out[0] == "j1"
    assert out[-3:] == [_status_line(final), *_post_failure_lines(final["post"])]
    assert "deliverables: 19 made, 1 failed, 0 queued" in out[-3]
    assert out[-1] == "  i3  gif  too_large: the gif is 9 MB, more than max_bytes (8 MB) after 3 attempts"


def test_farm_status_shows_the_failures_and_json_the_whole_post(monkeypatch, capsys):
    status = {**STATUS, "post": post(made=2, failed=1, failures=[FAILURE])}
    monkeypatch.setattr(remote, "_client", lambda args: FakeClient([status]))
    assert remote.cmd_status(argparse.Namespace(job="j1", json=False)) == 0
    assert capsys.readouterr().out.splitlines()[1:] == _post_failure_lines(status["post"])
    assert remote.cmd_status(argparse.Namespace(job="j1", json=True)) == 0
    assert json.loads(capsys.readouterr().out)["post"] == status["post"]


def test_farm_jobs_lists_one_line_per_job(monkeypatch, capsys):
    status = {**STATUS, "post": post(failed=1, failures=[FAILURE])}
    client = FakeClient([status])
    client.jobs = lambda limit: {"jobs": [status, STATUS]}
    monkeypatch.setattr(remote, "_client", lambda args: client)
    assert remote.cmd_jobs(argparse.Namespace(limit=50, json=False)) == 0
    assert capsys.readouterr().out.splitlines() == [_status_line(status), _status_line(STATUS)]


def job_with_deliverables(tmp_path: Path) -> JobState:
    manifest = {"version": 1, "defaults": {"deliverables": ["vertical", "gif"]},
                "items": [{"id": "i3", "image": "s3://in/a.png", "prompt": "p"}]}
    return JobState(parse_manifest(json.dumps(manifest), "json", base_dir=tmp_path))


def test_the_run_summary_shows_the_deliverables_and_a_table_of_their_failures(tmp_path):
    state = job_with_deliverables(tmp_path)
    state.post.add("made", 1.5)
    state.post.add("failed", 0.2, {**FAILURE, "message": "[libx264 @ 0x55] too big"})
    console = Console(record=True, width=200)
    print_summary(state, "s3://out/job", "s3://out/job/job.json", console=console)
    text = console.export_text()
    assert "failed deliverables" in text
    row = next(line for line in text.splitlines() if "i3" in line)
    assert "gif" in row and "too_large" in row and "[libx264 @ 0x55] too big" in row  # brackets are not markup
    assert "deliverables: 1 made, 1 failed, 0 queued" in text


def test_the_run_summary_of_a_job_without_deliverables_says_nothing_of_them(tmp_path):
    items = [{"id": "i1", "image": "s3://in/a.png", "prompt": "p"}]
    state = JobState(parse_manifest(json.dumps({"version": 1, "items": items}), "json", base_dir=tmp_path))
    console = Console(record=True, width=200)
    print_summary(state, "s3://out/job", "s3://out/job/job.json", console=console)
    assert "deliverable" not in console.export_text()


def test_the_status_line_counts_cancelled_items():
    status = {**STATUS, "state": "cancelled", "counts": {"total": 12, "succeeded": 3, "failed": 0, "cancelled": 9}}
    assert _status_line(status) == "j1  spring  cancelled  3/12 done, 0 failed, 9 cancelled  -> s3://out"


def test_farm_cancel_of_one_item_says_what_became_of_it_and_the_job(monkeypatch, capsys):
    job = {**STATUS, "state": "running", "counts": {"total": 10, "succeeded": 6, "failed": 0, "cancelled": 1}}
    calls = []

    class Client:
        def cancel_item(self, job_id, item_id):
            calls.append((job_id, item_id))
            return {"job_id": job_id, "item_id": item_id, "state": "cancelling", "job": job}

    monkeypatch.setattr(remote, "_client", lambda args: Client())
    assert remote.cmd_cancel(argparse.Namespace(job="j1", item="i4")) == 0
    assert calls == [("j1", "i4")]
    assert capsys.readouterr().out.splitlines() == ["i4  cancelling", _status_line(job)]
