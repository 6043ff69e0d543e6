"""The commands that work on this machine: `run`, `resume`, `render` and `demo` render here (an
embedded Ray cluster, or one joined with --address); `validate`, `plan`, `tiers` and `calibrate`
render nothing and import no heavy libraries; `serve` runs the farm's HTTP API here; `pick` of a
job's output (`pick_in_output`) changes its job.json and contact sheet.

Also how the command line's flags become the manifest's overrides (`_job_overrides`), and the
settings the manifest is read with (`_manifest_settings`).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

from farm.cli.output import (
    EXIT_CANNOT_RUN,
    EXIT_FAILED_ITEMS,
    EXIT_INVALID,
    EXIT_OK,
    _duration,
    _print_manifest_error,
)
from farm.core.errors import FarmError, ManifestError, ManifestIssue
from farm.core.families import FAMILIES
from farm.core.manifest import JobOverrides, issues_from_validation
from farm.core.params import ParamOverrides
from farm.storage.manifest_file import load_manifest

MAX_LISTED_WARNINGS = 20
PARAM_FLAGS = ("preset", "resolution", "aspect", "frames", "fps", "steps", "guidance_scale", "negative_prompt", "seed", "degrade")


def _param_overrides(args: argparse.Namespace) -> ParamOverrides:
    from pydantic import ValidationError

    values = {
        name: getattr(args, name)
        for name in PARAM_FLAGS
        if getattr(args, name, None) is not None
    }
    try:
        return ParamOverrides.model_validate(values)
    except ValidationError as exc:
        issues = issues_from_validation(exc, known=tuple(values))
        flags = [replace(issue, field="--" + (issue.field or "").replace("_", "-")) for issue in issues]
        raise ManifestError(flags, "command line") from None


def _job_overrides(args: argparse.Namespace) -> JobOverrides:
    order = getattr(args, "degrade_order", None)
    if order:
        from farm.core.ladder import validate_order

        try:
            order = validate_order(step.strip() for step in order.split(","))
        except ValueError as error:
            raise ManifestError([ManifestIssue(str(error), field="--degrade-order", value=order)], "command line") from None
    from farm.cli.post import parse_deliverable_flags
    from farm.core.deliverables import DeliverableError
    from farm.core.manifest.spec import MAX_TAKES

    try:
        deliverables = parse_deliverable_flags(getattr(args, "deliverable", None))
    except DeliverableError as error:
        raise ManifestError([ManifestIssue(str(error), field=error.field, value=error.value)], "command line") from None
    takes = getattr(args, "takes", None)
    if takes is not None and not 1 <= takes <= MAX_TAKES:
        raise ManifestError([ManifestIssue(f"{takes} is not allowed; use an integer from 1 to {MAX_TAKES}",
                                           field="--takes", value=takes)], "command line")
    return JobOverrides(
        name=getattr(args, "name", None),
        model=getattr(args, "model", None),
        output=getattr(args, "output", None),
        params=_param_overrides(args),
        degrade_order=order or None,
        unfit=getattr(args, "unfit", None),
        deliverables=deliverables,
        takes=takes,
    )


def cmd_validate(args: argparse.Namespace) -> int:
    """Every error at once, local images included: one that cannot be opened is an error of its
    item here (`farm run` would fail that item and render the others)."""
    from farm.core.errors import excerpt

    try:
        spec = load_manifest(args.manifest, _job_overrides(args), check_files=True, **_manifest_settings(args))
    except ManifestError as error:
        if args.json:
            print(json.dumps({"valid": False, "errors": [i.to_dict() for i in error.issues]}, indent=1))
        else:
            _print_manifest_error(error)
        return EXIT_INVALID
    families = _families_of(spec)
    if args.json:
        print(
            json.dumps(
                {"valid": True, "name": spec.name, "model": spec.model, "output": spec.output, "items": len(spec.items),
                 "families": {name: {"items": count, **FAMILIES[name].to_dict()} for name, count in families.items()}},
                indent=1,
            )
        )
    else:
        print(f"{args.manifest}: valid, {len(spec.items)} items, job {spec.name!r}, model {excerpt(spec.model)}")
        for name, count in families.items():
            rules = FAMILIES[name]
            print(f"  {count} item(s) {rules.title}: {rules.frames_rule()}, {rules.size_rule()}, "
                  f"native {rules.native_fps} fps, prompt {'used' if rules.takes_prompt else 'not used'}")
        unknown = sum(1 for item in spec.items if item.family is None)
        if unknown:
            print(f"  {unknown} item(s) of a model whose family its weights will tell (checked when a worker loads it)")
    return EXIT_OK


def _families_of(spec) -> dict[str, int]:
    counts: dict[str, int] = {}
    for item in spec.items:
        if item.family:
            counts[item.family] = counts.get(item.family, 0) + 1
    return counts


def cmd_models(args: argparse.Namespace) -> int:
    """The families farm renders: their rules, tiny variants, Hub ids, savers, and what fits which card."""
    from farm.core.tiers import load_tier_table
    from farm.core.vram import PROFILES, estimate_vram

    table = load_tier_table(args.settings.tiers_file)
    rows = []
    for name, rules in FAMILIES.items():
        profile = PROFILES[name]
        width, height = _typical_size(rules)
        frames = rules.default_frames
        fits = {}
        for label, savers in (("no_savers", ()), ("all_savers", rules.saver_levels[-1])):
            estimate = estimate_vram(profile, width, height, frames, savers=savers)
            tier = next((t for t in table.tiers if estimate.total_bytes <= t.budget_bytes), None)
            fits[label] = {"estimate_gib": round(estimate.total_gib, 1), "smallest_tier": tier.name if tier else None}
        rows.append({**rules.to_dict(), "parameters": profile.total_params,
                     "typical": f"{width}x{height}x{frames}", "fits": fits})
    if args.json:
        print(json.dumps(rows, indent=1))
        return EXIT_OK
    for row in rows:
        print(f"{row['family']}: {row['title']} ({', '.join(row['pipelines'])}), "
              f"{row['parameters'] / 1e9:.1f} B parameters")
        print(f"  frames {row['frames']}; {row['sizes']}; native {row['native_fps']} fps; prompt {row['prompt']}; "
              f"guidance {row['guidance']}")
        print(f"  tiny variant `{row['tiny']}`; Hub ids: {', '.join(row['hub_ids'])}")
        print(f"  savers: {', '.join(row['savers'])}")
        fits = row["fits"]
        print(f"  {row['typical']}: {fits['no_savers']['estimate_gib']} GiB -> {fits['no_savers']['smallest_tier'] or 'no tier'}"
              f"; with every saver {fits['all_savers']['estimate_gib']} GiB -> {fits['all_savers']['smallest_tier'] or 'no tier'}")
        if row["notes"]:
            print(f"  {row['notes']}")
    print("weights offline: `hf download HUB_ID --local-dir DIR` on a machine with internet, then --model DIR "
          "(or an item's `model:`); docs/models.md")
    return EXIT_OK


def _typical_size(rules) -> tuple[int, int]:
    """The size `farm models` quotes: the family's only size, else its reference model's usual one."""
    if rules.fixed_sizes:
        return rules.fixed_sizes[0]
    return {"i2vgen-xl": (512, 512), "svd": (1024, 576), "cogvideox": (720, 480)}.get(rules.name, (832, 480))


def cmd_plan(args: argparse.Namespace) -> int:
    from farm.core.errors import excerpt
    from farm.core.planner import plan_job
    from farm.core.tiers import CPU_TIER, ClusterShape, load_tier_table, parse_gpus

    try:
        spec = load_manifest(
            args.manifest, _job_overrides(args), skip_invalid=True, check_files=True, **_manifest_settings(args)
        )
    except ManifestError as error:
        _print_manifest_error(error)
        return EXIT_INVALID
    table = load_tier_table(args.tiers or args.settings.tiers_file)
    try:
        shape = parse_gpus(args.gpus, table) if args.gpus else ClusterShape({name: 1 for name in table.names()})
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_INVALID
    profile = _vram_profile(spec.model, args.settings.vram_calibration)
    if profile is None:
        return EXIT_INVALID
    # The same profile: plan_job asks profile_for_model with the same calibration.
    plan = plan_job(spec, shape, table, calibration=args.settings.vram_calibration)
    if args.json:
        document = plan.to_dict()
        document["invalid_items"] = [{"index": r.index, "id": r.id, "message": r.message} for r in spec.rejected]
        document["vram_calibration"] = profile.calibration
        print(json.dumps(document, indent=1))
        return EXIT_OK
    out = sys.stdout
    if not args.gpus:
        out.write(f"no --gpus given: planning for one GPU of every tier ({', '.join(table.names())})\n")
    if profile.calibration:
        out.write(f"VRAM estimates calibrated by {profile.calibration}\n")
    out.write(f"{'item':32} {'family':>13} {'tier':>5} {'VRAM GiB':>9} {'budget':>7} {'settings':>18} {'est. s':>7}  planned degradations\n")
    for item_plan in plan.items:
        settings = item_plan.settings
        width, height = settings.size
        size = f"{width}x{height}x{settings.frames}"
        estimate = f"{item_plan.estimate.total_gib:9.1f}" if item_plan.estimate else f"{'-':>9}"
        budget = f"{item_plan.budget_bytes / 2**30:7.1f}" if item_plan.budget_bytes else f"{'-':>7}"
        seconds = f"{item_plan.seconds:7.0f}" if item_plan.seconds is not None else f"{'-':>7}"
        steps = "; ".join(f"{d.step} {d.before} -> {d.after}" for d in item_plan.degradations)
        if item_plan.rejected:
            steps = "REJECTED: " + item_plan.rejected
        elif not item_plan.fits:
            steps = (steps + "; " if steps else "") + "still over budget within its degrade mode: expect an OOM"
        out.write(f"{item_plan.item_id[:32]:32} {item_plan.family:>13} {item_plan.tier or '-':>5} {estimate} {budget} {size:>18} {seconds}  {steps}\n")
    out.write("\n")
    out.write(f"{'tier':6} {'workers':>7} {'items':>7} {'busy s/worker':>14}\n")
    for name, load in plan.tiers.items():
        per_worker = load.busy_seconds / load.workers if load.workers else 0
        out.write(f"{name:6} {load.workers:7d} {load.items:7d} {per_worker:14.0f}\n")
    rejected = sum(1 for p in plan.items if p.rejected)
    degraded = sum(1 for p in plan.items if p.degradations)
    out.write(f"\n{len(plan.items)} items, {degraded} with planned degradations, {rejected} rejected, {len(spec.rejected)} invalid\n")
    if spec.rejected:
        out.write("invalid items (not planned; `farm run` reports them as failed):\n")
        for invalid in spec.rejected[:MAX_LISTED_WARNINGS]:
            named = f" (id {excerpt(invalid.id)})" if invalid.id else ""
            out.write(f"  items[{invalid.index}]{named}: {invalid.message}\n")
        if len(spec.rejected) > MAX_LISTED_WARNINGS:
            out.write(f"  and {len(spec.rejected) - MAX_LISTED_WARNINGS} more (--json lists them all)\n")
    if plan.makespan_seconds is not None:
        out.write(
            f"estimated makespan {_duration(plan.makespan_seconds)} (ideal {_duration(plan.ideal_seconds)}; "
            "speeds: docs/vram.md)\n"
        )
    elif CPU_TIER in shape.workers:
        out.write("CPU-only cluster: no memory limits and no time estimate\n")
    return EXIT_OK


def cmd_tiers(args: argparse.Namespace) -> int:
    from farm.core.params import RESOLUTIONS
    from farm.core.tiers import load_tier_table
    from farm.core.vram import estimate_vram

    table = load_tier_table(args.tiers or args.settings.tiers_file)
    if args.node:
        from farm.runtime.cluster import local_gpu_resources

        options = local_gpu_resources(table, args.settings.workers)
        if not options:
            print("# no GPU found (set FARM_GPU_VRAM_GB to declare one)", file=sys.stderr)
            return EXIT_OK
        print(f"--num-gpus {options['num_gpus']} --resources '{json.dumps(options['resources'])}'")
        return EXIT_OK
    profile = _vram_profile(args.model or args.settings.model_ref, args.settings.vram_calibration)
    if profile is None:
        return EXIT_INVALID
    rules = FAMILIES.get(profile.name, FAMILIES["i2vgen-xl"])
    resolutions = [r for r in RESOLUTIONS if r % rules.size_multiple == 0]
    allowed = rules.allowed_frames()
    print(f"{'tier':5} {'card GiB':>8} {'budget GiB':>10} {'example':16} {'TFLOP/s':>8}  max frames at "
          f"{'/'.join(map(str, resolutions))}p (1:1, no savers | all savers)")
    for tier in table.tiers:
        fits = []
        for savers in (rules.saver_levels[0], rules.saver_levels[-1]):
            row = []
            for resolution in resolutions:
                frames = [f for f in allowed if estimate_vram(profile, resolution, resolution, f, savers=savers).total_bytes <= tier.budget_bytes]
                row.append(str(max(frames)) if frames else "-")
            fits.append("/".join(row))
        print(
            f"{tier.name:5} {tier.card_gib:8.0f} {tier.budget_gib:10.1f} {tier.example:16} "
            f"{tier.peak_tflops * tier.efficiency:8.0f}  {fits[0]:>14} | {fits[1]}"
        )
    calibrated = f" (calibrated by {profile.calibration})" if profile.calibration else ""
    print(f"resource names: {', '.join(t.resource for t in table.tiers)}; estimates for {profile.name}{calibrated}")
    return EXIT_OK


def _manifest_settings(args: argparse.Namespace) -> dict:
    """What the settings say about reading manifests (the model when none is named, the size limit)."""
    return {"env_model": args.settings.model, "max_bytes": args.settings.max_manifest_bytes}


def _vram_profile(model: str, calibration: str | None):
    """The estimator's profile for `model`: calibrated when FARM_VRAM_CALIBRATION names a file.
    None, after saying why, when that file cannot be used (an invalid setting: exit 2)."""
    from farm.core.vram import profile_for_model
    from farm.models.calibration_file import CalibrationFileError

    try:
        return profile_for_model(model, calibration=calibration)
    except CalibrationFileError as error:
        print(f"error: {error}", file=sys.stderr)
        return None


def cmd_calibrate(args: argparse.Namespace) -> int:
    """Fit the estimator's constants to the peaks measured on CUDA that sidecars record."""
    from farm.core.calibration import RULE, CalibrationFile, NotEnoughMeasurements, fit, group
    from farm.core.vram import CALIBRATION_ENV, GIB, PROFILES
    from farm.models.calibration_file import collect, write_calibration

    collected = collect(args.outputs)
    for uri in collected.empty:
        print(f"warning: no sidecars under {uri}", file=sys.stderr)
    print(f"read {collected.sidecars} sidecar(s) of {len(collected.jobs)} job(s): "
          f"{len(collected.measurements)} CUDA measurement(s)")
    for reason, count in sorted(collected.skipped.items()):
        print(f"  skipped {count} {reason}")
    if not collected.measurements:
        print("error: nothing to calibrate from: only sidecars of renders measured on CUDA GPUs count "
              "(memory.kind \"cuda\"); render on a GPU, then run `farm calibrate` on that output", file=sys.stderr)
        return EXIT_INVALID
    entries, refused = [], []
    for (family, gpu_name), measurements in group(collected.measurements).items():
        builtin = PROFILES[family]
        try:
            entry = fit(builtin, measurements)
        except NotEnoughMeasurements as error:
            refused.append(str(error))
            continue
        entries.append(entry)
        print(f"{family} on {gpu_name}: {entry.points} render(s) ({entry.denoise_points} denoise, "
              f"{entry.decode_points} decode measurements)")
        print(f"  overhead {builtin.overhead_bytes / GIB:.3f} -> {entry.overhead_bytes / GIB:.3f} GiB, workspace factor "
              f"{builtin.workspace_factor:.3f} -> {entry.workspace_factor:.3f} (denoise), "
              f"{builtin.decode_factor:.3f} -> {entry.decode_workspace_factor:.3f} (decode)")
        print(f"  error of the estimated peak vs measured: built-in {entry.before.describe()} -> "
              f"calibrated {entry.quality.describe()}")
    for message in refused:
        print(f"{'not calibrated' if entries else 'error'}: {message}", file=sys.stderr)
    if refused:
        print(f"the rule: {RULE}. Render more items on that GPU at other resolutions and frame counts "
              "(e.g. 256p, 512p and 768p at 8 and 24 frames) and run `farm calibrate` again with their outputs",
              file=sys.stderr)
    if not entries:
        print("nothing written", file=sys.stderr)
        return EXIT_INVALID
    path = write_calibration(args.output, CalibrationFile.of(entries))
    print(f"wrote {path}; `farm plan`, the planner and the workers use it with {CALIBRATION_ENV}={path}")
    return EXIT_OK


def _is_loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name: it may resolve to anything


def cmd_serve(args: argparse.Namespace) -> int:
    from farm.runtime.service import ServeOptions, ServiceStartError, serve_until_stopped

    # --output is made absolute: the coordinator and the API replica do not run in this folder.
    settings = args.settings.with_model(args.model).with_output(args.output)
    if not settings.api.token and not settings.api.allow_anonymous and not _is_loopback(args.host):
        print(f"error: --host {args.host} publishes the API beyond this machine, and FARM_API_TOKEN is not set: "
              "anyone who reaches the port could submit jobs. Set FARM_API_TOKEN (e.g. `export FARM_API_TOKEN="
              "$(openssl rand -hex 24)`), or serve on 127.0.0.1, or set FARM_API_ALLOW_ANONYMOUS=true to accept that.",
              file=sys.stderr)
        return EXIT_INVALID
    options = ServeOptions(address=args.address, host=args.host, port=args.port, start_timeout_s=args.start_timeout)
    try:
        serve_until_stopped(settings, options)
    except ServiceStartError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_CANNOT_RUN
    return EXIT_OK


def _execute(spec, args: argparse.Namespace, manifest: Path | None = None, *, show_summary: bool = True) -> int:
    from farm.console import ConsoleReporter, print_summary
    from farm.runtime.executor import RunOptions, run_job
    from farm.runtime.stopping import StopRequest
    from farm.storage import open_store
    from farm.storage.base import job_record_key

    stop = StopRequest(grace_s=args.settings.engine.stop_grace_s)
    stop.install()
    options = RunOptions(
        address=args.address,
        settings=args.settings,
        workers=args.workers,
        force=getattr(args, "force", False),
        manifest=(manifest.name, manifest.read_bytes()) if manifest else None,
        reporter=ConsoleReporter(),
        stop=stop,
    )
    metrics_server = None
    if getattr(args, "metrics_port", None):
        from farm.metrics import FarmMetrics

        options.metrics = FarmMetrics()
        metrics_server = options.metrics.serve(args.metrics_port, args.metrics_host)
        print(f"metrics on http://{args.metrics_host}:{args.metrics_port}/metrics", file=sys.stderr)
    try:
        state = run_job(spec, options)
    except FarmError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_CANNOT_RUN
    finally:
        if metrics_server is not None:
            import time

            time.sleep(args.metrics_linger)  # let Prometheus scrape the final figures
            metrics_server.shutdown()
    store = open_store(spec.output)
    if show_summary:
        print_summary(state, store.location(spec.name), store.location(job_record_key(spec.name)))
    if state.interrupted:
        left = sum(1 for status in state.items.values() if status.state == "queued")
        print(f"stopped before the end: {left} item(s) not rendered; finish with "
              f"`farm resume {store.location(spec.name)}`", file=sys.stderr)
        return stop.exit_code
    counts = state.counts()
    return EXIT_OK if counts["failed"] == 0 else EXIT_FAILED_ITEMS


def cmd_run(args: argparse.Namespace) -> int:
    try:
        spec = load_manifest(
            args.manifest, _job_overrides(args), skip_invalid=args.skip_invalid, **_manifest_settings(args)
        )
    except ManifestError as error:
        _print_manifest_error(error)
        print("nothing was rendered; fix the errors above or pass --skip-invalid", file=sys.stderr)
        return EXIT_INVALID
    if spec.rejected:
        print(f"skipping {len(spec.rejected)} invalid item(s), reported as failed:", file=sys.stderr)
        for rejected in spec.rejected:
            print(f"  items[{rejected.index}]: {rejected.message}", file=sys.stderr)
    return _execute(spec, args, Path(args.manifest))


def load_job(location: str):
    """(store, output, name, spec) of the job at OUTPUT_URI/JOB_NAME, or the exit code after
    saying on stderr why it cannot be read."""
    from farm.core.manifest import JobSpec
    from farm.storage import open_store
    from farm.storage.base import job_spec_key

    output, _, name = location.rstrip("/").rpartition("/")
    if not output or not name:
        print(f"error: {location!r}: write OUTPUT_URI/JOB_NAME, e.g. s3://bucket/renders/spring", file=sys.stderr)
        return EXIT_INVALID
    try:
        store = open_store(output)
        data = store.get_bytes(job_spec_key(name))
    except FarmError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_CANNOT_RUN
    if data is None:
        print(f"error: no job {name!r} under {output} (no {job_spec_key(name)}); check the URI", file=sys.stderr)
        return EXIT_INVALID
    return store, output, name, JobSpec.from_dict(json.loads(data), output=output)


def cmd_resume(args: argparse.Namespace) -> int:
    found = load_job(args.job)
    if isinstance(found, int):
        return found
    _, output, _, spec = found
    print(f"resuming job {spec.name!r} ({len(spec.items)} items) from {output}")
    return _execute(spec, args)


def pick_in_output(location: str, item: str, take: str) -> int:
    """`farm pick OUTPUT/JOB ITEM TAKE` without a service: the pick goes into the job's job.json
    (compare-and-swap, so a concurrent pick is not lost), then its contact sheet is rewritten."""
    from farm.cli.remote import _print_takes
    from farm.core.manifest import JobSpec
    from farm.core.takes import resolve_pick, takes_listing, takes_of
    from farm.post.contact import write_contact_sheet_logged
    from farm.storage import open_store
    from farm.storage.base import job_record_key, job_spec_key
    from farm.storage.picks import read_record, record_picks

    location = location.rstrip("/")
    output, _, name = location.rpartition("/")
    if not output or not name:
        print(f"error: {location!r}: write a job id (j-...) or OUTPUT_URI/JOB_NAME, e.g. ./farm-output/spring",
              file=sys.stderr)
        return EXIT_INVALID
    store = open_store(output)
    data, record = store.get_bytes(job_spec_key(name)), read_record(store, name)
    if data is None or record is None:
        missing = job_spec_key(name) if data is None else job_record_key(name)
        print(f"error: no job {name!r} under {output} (no {missing}); check the location, or run the job first",
              file=sys.stderr)
        return EXIT_INVALID
    spec = JobSpec.from_dict(json.loads(data), output=output)
    items = record.get("items") if isinstance(record.get("items"), dict) else {}
    states = {item_id: entry.get("state") for item_id, entry in items.items() if isinstance(entry, dict)}
    shared, take_id = resolve_pick(spec, item, take, states)  # TakeError: exit 2, with what to do
    if record.get("state") in ("queued", "running"):
        print(f"warning: job.json says job {name!r} is {record['state']}: a run of it still going rewrites job.json "
              "without this pick; pick again once it has ended", file=sys.stderr)
    picks = record_picks(store, name, {shared: take_id})
    _print_takes(takes_listing(shared, takes_of(spec, shared)[1], items, picks))
    print(f"picked {take_id} for {shared} ({len(picks)} image(s) picked) in {store.location(job_record_key(name))}")
    sheet = write_contact_sheet_logged(store, spec)  # from the record just written
    if sheet:
        print(f"contact sheet: {store.location(sheet)}")
    chosen = next(i for i in spec.items if i.id == take_id)
    if spec.deliverables_for == "picked" and chosen.deliverables and states.get(take_id) in ("succeeded", "skipped"):
        from farm.post.item import PostTask, post_item

        result = post_item(PostTask(None, name, output, take_id, chosen.deliverables))  # the CPU stage's own code
        made = ", ".join(f"{r.name} {r.outcome}" + (f" ({r.reason}: {r.message})" if r.reason else "")
                         for r in result.results)
        print(f"deliverables of {take_id}: {made}")
        if any(r.outcome == "failed" for r in result.results):
            return EXIT_FAILED_ITEMS
    return EXIT_OK


def cmd_render(args: argparse.Namespace) -> int:
    from farm.core.manifest import parse_manifest

    image = Path(args.image).expanduser().resolve()
    target = Path(args.output).expanduser().resolve() if args.output else image.with_suffix(".mp4")
    if target.suffix.lower() != ".mp4":
        print(f"error: -o {target}: the output must end in .mp4", file=sys.stderr)
        return EXIT_INVALID
    if not image.is_file():
        what = "not found" if not image.exists() else "not a regular file"
        print(f"error: image {args.image}: {what}; check the path", file=sys.stderr)
        return EXIT_INVALID
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".farm-render-", dir=target.parent))
    try:
        document = {"version": 1, "name": "render", "items": [{"id": target.stem, "image": str(image), "prompt": args.prompt}]}
        overrides = JobOverrides(name="render", model=args.model, output=str(staging), params=_param_overrides(args))
        try:
            spec = parse_manifest(
                json.dumps(document), "json", base_dir=Path.cwd(), overrides=overrides, env_model=args.settings.model
            )
        except ManifestError as error:
            _print_manifest_error(error)
            return EXIT_INVALID
        args.workers = 1
        code = _execute(spec, args, show_summary=False)  # its results folder is the temporary one
        produced = staging / "render"
        for suffix in (".mp4", ".jpg", ".json"):
            source = produced / f"{spec.items[0].id}{suffix}"
            if source.exists():
                os.replace(source, target.with_suffix(suffix))
        if code == EXIT_OK:
            print(f"video: {target}  thumbnail: {target.with_suffix('.jpg')}  sidecar: {target.with_suffix('.json')}")
        return code
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def cmd_demo(args: argparse.Namespace) -> int:
    from farm.demo import TINY_NOTICE, write_demo_inputs

    output = Path(args.output).expanduser().resolve()
    manifest = write_demo_inputs(output / "inputs")
    print(f"wrote sample images and {manifest}")
    if args.model == "tiny" or args.model is None:
        from farm.models.loading import cache_dir
        from farm.models.tiny import ensure_tiny_model

        print("building the tiny model (random weights) if needed...")
        print(f"tiny model: {ensure_tiny_model(cache_dir())}")
    spec = load_manifest(manifest, JobOverrides(output=str(output), model=args.model), max_bytes=args.settings.max_manifest_bytes)
    code = _execute(spec, args)
    print()
    print(TINY_NOTICE if spec.model == "tiny" else "")
    print(f"videos are in {output / spec.name}/ (ITEM.mp4, ITEM.jpg thumbnail, ITEM.json sidecar); "
          f"deliverables in {output / spec.name / 'deliverables'}/NAME/")
    return code
