"""The `farm` argument parser: every command, its flags and help text, and the function it runs."""

from __future__ import annotations

import argparse

from farm import __version__
from farm.cli.local import (
    cmd_calibrate,
    cmd_demo,
    cmd_models,
    cmd_plan,
    cmd_render,
    cmd_resume,
    cmd_run,
    cmd_serve,
    cmd_tiers,
    cmd_validate,
)
from farm.cli.post import cmd_post
from farm.cli.remote import cmd_cancel, cmd_jobs, cmd_pick, cmd_status, cmd_submit
from farm.core.params import ASPECTS, PRESETS


def _add_param_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("generation parameters (override the manifest's defaults)")
    group.add_argument("--preset", choices=list(PRESETS))
    group.add_argument("--resolution", help="short side: 256, 512, 768 or 1024 (e.g. 512 or 512p)")
    group.add_argument("--aspect", choices=list(ASPECTS))
    group.add_argument("--frames", type=int, help="8-32")
    group.add_argument("--fps", type=int, help="4-24, the MP4's frame rate")
    group.add_argument("--steps", type=int, help="10-100 denoising steps")
    group.add_argument("--guidance-scale", type=float, help="1-20")
    group.add_argument("--negative-prompt")
    group.add_argument("--seed", type=int)
    group.add_argument("--degrade", choices=["allowed", "memory_savers", "never"], help="what may change on OOM")
    group.add_argument("--degrade-order", help="e.g. memory_savers,bigger_tier,frames,resolution")
    group.add_argument("--unfit", choices=["degrade", "reject"], help="items that fit no GPU present")
    group.add_argument("--deliverable", action="append", metavar="NAME",
                       help="a deliverable made from every render, off the GPU (repeatable): vertical, square, "
                       "landscape, web, fps30, fade, gif, webp, poster, or a JSON object; replaces the manifest's defaults")
    group.add_argument("--takes", type=int, help="variants (distinct seeds) of every item, 1-16")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="farm", description="A render farm for image-to-video generation (I2VGen-XL).")
    parser.add_argument("--version", action="version", version=f"farm {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    def add_cluster_flags(sub):
        sub.add_argument("--model", help="`tiny`, a local diffusers folder or a Hugging Face id (env FARM_MODEL)")
        sub.add_argument("--address", help="Ray cluster to join (default: start an embedded one on 127.0.0.1)")
        sub.add_argument("--workers", type=int, help="render workers (default: one per GPU, or one on the CPU)")

    run = commands.add_parser("run", help="render every item of a manifest")
    run.add_argument("manifest")
    run.add_argument("--output", help="output folder or s3://BUCKET/PREFIX (default: the manifest's `output`, else ./farm-output)")
    run.add_argument("--name", help="job name (default: the manifest's `name`, else its file name)")
    run.add_argument("--skip-invalid", action="store_true", help="run the valid items, report invalid ones as failed")
    run.add_argument("--force", action="store_true", help="render even items whose identical result is committed")
    run.add_argument("--metrics-port", type=int, help="serve Prometheus metrics on this port while the job runs")
    run.add_argument("--metrics-host", default="127.0.0.1", help="address for --metrics-port (default 127.0.0.1)")
    run.add_argument("--metrics-linger", type=float, default=0.0, help="keep serving metrics this many seconds after the job")
    add_cluster_flags(run)
    _add_param_flags(run)
    run.set_defaults(func=cmd_run)

    resume = commands.add_parser("resume", help="finish an interrupted job from its output: OUTPUT_URI/JOB_NAME")
    resume.add_argument("job", help="e.g. ./farm-output/spring or s3://bucket/renders/spring")
    resume.add_argument("--force", action="store_true", help="render every item again")
    add_cluster_flags(resume)
    resume.set_defaults(func=cmd_resume)

    render = commands.add_parser("render", help="render one image")
    render.add_argument("image")
    render.add_argument("--prompt", required=True)
    render.add_argument("-o", "--output", help="output .mp4 (default: next to the image)")
    add_cluster_flags(render)
    _add_param_flags(render)
    render.set_defaults(func=cmd_render)

    def add_dry_run(name: str, help_text: str, func):
        """validate and plan: a manifest, job-level overrides, no rendering."""
        sub = commands.add_parser(name, help=help_text)
        sub.add_argument("manifest")
        sub.add_argument("--json", action="store_true", help="machine-readable output")
        sub.add_argument("--model")
        sub.add_argument("--output")
        sub.add_argument("--name")
        _add_param_flags(sub)
        sub.set_defaults(func=func)
        return sub

    add_dry_run("validate", "check a manifest and list every error, without rendering", cmd_validate)
    plan = add_dry_run("plan", "dry run: VRAM estimate, tier and degradations per item, makespan", cmd_plan)
    plan.add_argument("--gpus", help="cluster shape, e.g. 12g:4,24g:2,80g:1 (default: one GPU of every tier)")
    plan.add_argument("--tiers", help="tier table file (YAML/JSON); default FARM_TIERS_FILE or the built-in table")

    tiers = commands.add_parser("tiers", help="the VRAM tier table: budgets, speeds and what fits each tier")
    tiers.add_argument("--tiers", help="tier table file (YAML/JSON); default FARM_TIERS_FILE or the built-in table")
    tiers.add_argument("--node", action="store_true", help="print this node's `ray start` GPU and tier resources")
    tiers.add_argument("--model")
    tiers.set_defaults(func=cmd_tiers)

    models = commands.add_parser("models", help="the model families farm renders: rules, tiny variants, Hub ids, savers, fit")
    models.add_argument("--json", action="store_true", help="machine-readable output")
    models.set_defaults(func=cmd_models)

    calibrate = commands.add_parser(
        "calibrate", help="fit the VRAM estimator to the peaks measured on CUDA in finished jobs' sidecars"
    )
    calibrate.add_argument("outputs", nargs="+", metavar="OUTPUT_URI", help="a job folder (OUTPUT/JOB) or an output root, local or s3://")
    calibrate.add_argument("--output", default="vram-calibration.json",
                           help="the calibration file to write (default ./vram-calibration.json)")
    calibrate.set_defaults(func=cmd_calibrate)

    serve_parser = commands.add_parser("serve", help="run the HTTP API (Ray Serve) and the job coordinator")
    serve_parser.add_argument("--host", default="127.0.0.1")
    serve_parser.add_argument("--port", type=int, default=8000)
    serve_parser.add_argument("--output", help="default output for jobs that name none (FARM_DEFAULT_OUTPUT)")
    serve_parser.add_argument("--start-timeout", type=float, default=900.0, help="seconds to wait for the model to load")
    add_cluster_flags(serve_parser)
    serve_parser.set_defaults(func=cmd_serve)

    def add_remote(name: str, help_text: str, func):
        sub = commands.add_parser(name, help=help_text)
        sub.add_argument("--endpoint", help="the farm's URL (default FARM_ENDPOINT, else http://127.0.0.1:8000)")
        sub.set_defaults(func=func)
        return sub

    submit = add_remote("submit", "submit a manifest to a farm service; prints the job id", cmd_submit)
    submit.add_argument("manifest")
    submit.add_argument("--wait", action="store_true", help="follow the job with a progress bar until it ends")
    status = add_remote("status", "a job's state and counts", cmd_status)
    status.add_argument("job")
    status.add_argument("--json", action="store_true")
    jobs = add_remote("jobs", "the farm's jobs, newest first", cmd_jobs)
    jobs.add_argument("--limit", type=int, default=50)
    jobs.add_argument("--json", action="store_true")
    cancel = add_remote("cancel", "cancel a job, or one item of it: rendering items stop at their next denoise step "
                        "(committed results stay)", cmd_cancel)
    cancel.add_argument("job")
    cancel.add_argument("item", nargs="?", help="one item's id: cancel only that item")
    pick = add_remote("pick", "choose one take of an image (a job's job.json `picks`; its contact.jpg marks it)", cmd_pick)
    pick.add_argument("job", help="a farm service's job id (j-...), or a job's output: ./farm-output/spring, s3://bucket/renders/spring")
    pick.add_argument("item", help="the image's id (its takes' shared id), or one take's id")
    pick.add_argument("take", nargs="?", help="the take's number (1 for ITEM.take-1) or its id; default: ITEM itself")

    post = commands.add_parser("post", help="add deliverables to a job that rendered: OUTPUT_URI/JOB_NAME")
    post.add_argument("job", help="e.g. ./farm-output/spring or s3://bucket/renders/spring")
    post.add_argument("--deliverable", action="append", required=True, metavar="NAME",
                      help="vertical, square, landscape, web, fps30, fade, gif, webp, poster, or a JSON object "
                      "(repeatable)")
    post.set_defaults(func=cmd_post)

    demo = commands.add_parser("demo", help="write sample images and a manifest, render them with the tiny model")
    demo.add_argument("--output", default="farm-demo", help="folder for the inputs and videos (default: ./farm-demo)")
    add_cluster_flags(demo)
    demo.set_defaults(func=cmd_demo)
    return parser
