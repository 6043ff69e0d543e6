"""Calibration I/O: measurements read from the sidecars of finished jobs, and the calibration
file (`farm calibrate` writes it, FARM_VRAM_CALIBRATION names it). The fit itself and the
file's schema are pure code in `farm.core.calibration`.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import ValidationError

from farm.core.calibration import PHASES, CalibrationFile, Measurement
from farm.core.errors import FarmError, excerpt
from farm.core.vram import CALIBRATION_ENV, PROFILES, profile_for_model
from farm.storage.base import JOB_FILES

MAX_LISTED_ERRORS = 5
READ_THREADS = 16  # sidecars are small: on S3 the round trips dominate


class CalibrationFileError(FarmError):
    """A calibration file that cannot be used: missing, not JSON, or not the schema."""


@dataclass
class Collected:
    """What the sidecars under some output URIs hold for calibration."""

    measurements: list[Measurement] = field(default_factory=list)
    sidecars: int = 0
    jobs: list[str] = field(default_factory=list)
    skipped: Counter = field(default_factory=Counter)  # reason -> sidecars
    empty: list[str] = field(default_factory=list)  # URIs without a sidecar


class _Skip(Exception):
    """A sidecar that holds no usable CUDA measurement; the message says why."""


def measurement_from_sidecar(sidecar: dict, source: str = "") -> Measurement:
    """The CUDA measurement a sidecar records; raises _Skip with the reason when there is none."""
    memory = sidecar.get("memory")
    if not isinstance(memory, dict):
        raise _Skip("without a memory section")
    kind = memory.get("kind")
    if kind != "cuda":
        raise _Skip(f"not measured on CUDA (kind {kind})")
    model = sidecar.get("model") or {}
    if model.get("id") == "tiny":
        raise _Skip("of the tiny model (random weights stand in for the real ones)")
    family = model.get("family") or profile_for_model(str(model.get("id"))).name
    if family not in PROFILES:
        raise _Skip(f"of model family {family!r}, which has no estimator profile")
    if not memory.get("gpu_name"):
        raise _Skip("without a GPU name")
    phases = memory.get("phases") or {}
    peaks = {
        phase: int(phases[phase]["max_allocated_bytes"])
        for phase in PHASES
        if isinstance(phases.get(phase), dict) and phases[phase].get("max_allocated_bytes")
    }
    if not peaks:
        raise _Skip("without a phase peak (memory.phases)")
    effective = sidecar["effective"]
    savers = memory.get("savers", effective.get("memory_savers", []))
    return Measurement(
        family=family,
        gpu_name=str(memory["gpu_name"]),
        width=int(effective["width"]),
        height=int(effective["height"]),
        frames=int(effective["frames"]),
        dtype_bytes=int(memory.get("dtype_bytes") or 2),
        savers=tuple(savers),
        guidance=float(effective.get("guidance_scale", 9.0)) > 1,
        peaks=peaks,
        source=source,
    )


def _sidecar_keys(store) -> list[tuple[str, str]]:
    """(key, job URI) of every sidecar in `store`: a job folder (OUTPUT/JOB: its ITEM.json) or
    an output root (its JOB/ITEM.json), both at once if it holds both."""
    root = store.uri.rstrip("/")
    found = []
    for info in store.list(""):
        parts = info.key.split("/")
        name = parts[-1]
        if len(parts) > 2 or not name.endswith(".json") or name in JOB_FILES or name.startswith("."):
            continue
        if len(parts) == 2 and parts[0].startswith("."):
            continue
        found.append((info.key, root if len(parts) == 1 else f"{root}/{parts[0]}"))
    return found


def collect(uris: list[str]) -> Collected:
    """Read every sidecar under `uris` (local folders or s3://) into measurements."""
    from farm.storage import open_store

    collected = Collected()
    for uri in uris:
        store = open_store(uri)
        keys = _sidecar_keys(store)
        if not keys:
            collected.empty.append(uri)
            continue
        with ThreadPoolExecutor(READ_THREADS) as pool:
            blobs = list(pool.map(lambda pair: store.get_bytes(pair[0]), keys))
        for (_key, job), data in zip(keys, blobs):
            try:
                sidecar = json.loads(data) if data is not None else None
            except ValueError:
                sidecar = None
            if not isinstance(sidecar, dict) or not isinstance(sidecar.get("effective"), dict):
                collected.skipped["that are not item sidecars (no `effective` settings)"] += 1
                continue
            collected.sidecars += 1
            if job not in collected.jobs:
                collected.jobs.append(job)
            try:
                collected.measurements.append(measurement_from_sidecar(sidecar, job))
            except _Skip as skip:
                collected.skipped[str(skip)] += 1
            except (KeyError, TypeError, ValueError) as error:
                collected.skipped[f"with unusable settings ({type(error).__name__}: {excerpt(str(error))})"] += 1
    return collected


def parse_calibration(text: str | bytes, where: str) -> CalibrationFile:
    try:
        data = json.loads(text)
    except ValueError as error:
        raise CalibrationFileError(f"calibration file {where}: not valid JSON ({error})") from None
    try:
        return CalibrationFile.model_validate(data)
    except ValidationError as error:
        problems = [
            f"field {_location(issue['loc'])}: {issue['msg']}"
            + (f" (got {excerpt(issue['input'])})" if issue["loc"] and not isinstance(issue["input"], (dict, list)) else "")
            for issue in error.errors()[:MAX_LISTED_ERRORS]
        ]
        more = f"; and {error.error_count() - MAX_LISTED_ERRORS} more" if error.error_count() > MAX_LISTED_ERRORS else ""
        raise CalibrationFileError(
            f"calibration file {where}: {'; '.join(problems)}{more}; write it again with `farm calibrate`"
        ) from None


def _location(loc) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(the whole file)"


_CACHE: dict[str, tuple[tuple[int, int], CalibrationFile]] = {}


def load_calibration(path: str | os.PathLike) -> CalibrationFile:
    """The calibration file at `path`, read again only when its modification time or size change."""
    where = str(path)
    resolved = os.path.abspath(os.path.expanduser(where))
    try:
        stat = os.stat(resolved)
        stamp = (stat.st_mtime_ns, stat.st_size)
        cached = _CACHE.get(resolved)
        if cached is not None and cached[0] == stamp:
            return cached[1]
        text = Path(resolved).read_bytes()
    except FileNotFoundError:
        raise CalibrationFileError(
            f"calibration file {where} (set by {CALIBRATION_ENV}) does not exist; write it with "
            f"`farm calibrate OUTPUT_URI...`, or unset {CALIBRATION_ENV} for the built-in constants"
        ) from None
    except OSError as error:
        raise CalibrationFileError(f"calibration file {where}: cannot read it ({error.strerror or error})") from None
    calibration = parse_calibration(text, where)
    _CACHE[resolved] = (stamp, calibration)
    return calibration


def write_calibration(path: str | os.PathLike, calibration: CalibrationFile) -> Path:
    """Write atomically (a temporary file renamed into place); returns the absolute path."""
    target = Path(path).expanduser().resolve()
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(calibration.model_dump_json(indent=1) + "\n")
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return target
