"""Fit the VRAM estimator's constants to measured peaks: an estimator that learns.

Every render on CUDA records in its sidecar the peak allocated memory of each phase. Per model
family and GPU kind, `fit` finds the three constants of `farm.core.vram` that the formula does
not derive (the overhead, the denoise workspace factor and the decode workspace factor) by
linear least squares on those peaks:

    denoise peak = overhead + W_denoise + f_d x A        A = activation elements x dtype bytes
    decode peak  = overhead + W_decode  + f_v x V + video  V = VAE elements x dtype bytes

with W, A, V and video from the profile and each render's settings (`vram.phase_terms`). The
residuals are relative (each row divided by its peak), the measure `farm calibrate` reports.

Enough data (`requirements`): per phase at least MIN_POINTS measurements at MIN_SIZES or more
different sizes (values of A, or of V); fewer leave a constant undetermined, and the fit is
refused. `CalibrationFile` is the file the fit writes (validated with pydantic) and
`CalibrationFile.profile_for` the profile it gives. Pure code: no I/O (reading sidecars and the
file: `farm.models.calibration_file`).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from farm.core.errors import FarmError
from farm.core.vram import GIB, ModelProfile, estimate_vram, phase_terms

PHASES = ("denoise", "decode")
MIN_POINTS = 3  # measurements per phase
MIN_SIZES = 2  # different sizes per phase
RULE = (
    f"each phase (denoise, decode) needs at least {MIN_POINTS} CUDA measurements of the model on "
    f"that GPU kind, at {MIN_SIZES} or more different sizes (width x height x frames, savers)"
)
CALIBRATION_VERSION = 1
FACTOR_DECIMALS = 5  # fitted factors in the file (1e-5 of a factor: far below any measurement's noise)


class NotEnoughMeasurements(FarmError):
    """Too few measurements (or measurements the formula cannot explain) to fit a group."""


@dataclass(frozen=True)
class Measurement:
    """One CUDA render: its settings and the measured peak allocated bytes of each phase."""

    family: str
    gpu_name: str
    width: int
    height: int
    frames: int
    dtype_bytes: int
    savers: tuple[str, ...]
    guidance: bool
    peaks: dict[str, int]  # phase -> max allocated bytes; a phase not measured is absent
    source: str = ""  # the job it came from

    def terms(self, profile: ModelProfile):
        return phase_terms(
            profile, self.width, self.height, self.frames,
            dtype_bytes=self.dtype_bytes, savers=self.savers, guidance=self.guidance,
        )

    def relative_error(self, profile: ModelProfile) -> float:
        """(estimated - measured) / measured for the render's peak, over the phases measured."""
        estimate = estimate_vram(
            profile, self.width, self.height, self.frames,
            dtype_bytes=self.dtype_bytes, savers=self.savers, guidance=self.guidance,
        )
        measured = max(self.peaks.values())
        return (max(estimate.phase_peak_bytes(phase) for phase in self.peaks) - measured) / measured


class ErrorSummary(BaseModel):
    """Relative errors of the estimated peak against the measured ones (fractions)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    median_error: float = Field(ge=0, allow_inf_nan=False)  # median of |error|
    worst_error: float = Field(allow_inf_nan=False)  # the largest |error|, signed: < 0 is an underestimate

    @classmethod
    def of(cls, profile: ModelProfile, measurements: list[Measurement]) -> ErrorSummary:
        errors = [m.relative_error(profile) for m in measurements]
        median, worst = statistics.median(abs(e) for e in errors), max(errors, key=abs)
        return cls(median_error=round(median, FACTOR_DECIMALS), worst_error=round(worst, FACTOR_DECIMALS))

    def describe(self) -> str:
        return f"median {self.median_error:.1%}, worst {self.worst_error:+.1%}"


class CalibrationEntry(BaseModel):
    """Fitted constants of one model family on one GPU kind, and how well they fit."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    family: str = Field(min_length=1)
    gpu_name: str = Field(min_length=1)
    workspace_factor: float = Field(gt=0, allow_inf_nan=False)
    decode_workspace_factor: float = Field(gt=0, allow_inf_nan=False)
    overhead_bytes: int = Field(ge=0)
    points: int = Field(ge=1)  # renders
    denoise_points: int = Field(ge=0)
    decode_points: int = Field(ge=0)
    median_error: float = Field(ge=0, allow_inf_nan=False)  # of the fitted constants (ErrorSummary)
    worst_error: float = Field(allow_inf_nan=False)
    before: ErrorSummary | None = None  # the built-in profile on the same measurements
    sources: list[str] = []  # the jobs measured

    @property
    def quality(self) -> ErrorSummary:
        return ErrorSummary(median_error=self.median_error, worst_error=self.worst_error)

    def apply(self, profile: ModelProfile, label: str) -> ModelProfile:
        return replace(
            profile,
            workspace_factor=self.workspace_factor,
            decode_workspace_factor=self.decode_workspace_factor,
            overhead_bytes=self.overhead_bytes,
            calibration=label,
        )


class CalibrationFile(BaseModel):
    """What `farm calibrate` writes and FARM_VRAM_CALIBRATION names."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    version: Literal[1]
    created_at: datetime
    entries: list[CalibrationEntry]

    @model_validator(mode="after")
    def _one_entry_per_gpu(self) -> CalibrationFile:
        seen = set()
        for entry in self.entries:
            key = (entry.family, entry.gpu_name)
            if key in seen:
                raise ValueError(f"two entries for {entry.family} on {entry.gpu_name!r}; keep one")
            seen.add(key)
        return self

    @classmethod
    def of(cls, entries: list[CalibrationEntry]) -> CalibrationFile:
        return cls(version=CALIBRATION_VERSION, created_at=datetime.now(timezone.utc), entries=entries)

    def profile_for(self, profile: ModelProfile, gpu_name: str | None, *, label: str) -> ModelProfile:
        """`profile` with the constants of `gpu_name`'s entry; without one (no GPU named, or one
        not measured), the largest of each constant over the family's entries, which estimates
        at least as much as every measured GPU at every size. No entry for the family: `profile`."""
        entries = [e for e in self.entries if e.family == profile.name]
        exact = [e for e in entries if gpu_name is not None and e.gpu_name == gpu_name]
        if exact:
            return exact[0].apply(profile, f"{label}: {gpu_name}")
        if not entries:
            return profile
        return replace(
            profile,
            workspace_factor=max(e.workspace_factor for e in entries),
            decode_workspace_factor=max(e.decode_workspace_factor for e in entries),
            overhead_bytes=max(e.overhead_bytes for e in entries),
            calibration=f"{label}: " + (
                entries[0].gpu_name if len(entries) == 1
                else f"the largest constants of {', '.join(sorted(e.gpu_name for e in entries))}"
            ),
        )


def requirements(profile: ModelProfile, measurements: list[Measurement]) -> list[str]:
    """What is missing for a fit, one phrase per phase short of data (empty: enough)."""
    missing = []
    for phase in PHASES:
        measured = [m for m in measurements if phase in m.peaks]
        sizes = {round(_regressor(m.terms(profile), phase)) for m in measured}
        if len(measured) < MIN_POINTS or len(sizes) < MIN_SIZES:
            missing.append(
                f"{phase}: {len(measured)} measurement(s) at {len(sizes)} size(s), "
                f"needs {MIN_POINTS} at {MIN_SIZES} or more sizes"
            )
    return missing


def _regressor(terms, phase: str) -> float:
    """The workspace bytes per unit of the phase's workspace factor."""
    elements = terms.activation_elements if phase == "denoise" else terms.vae_elements
    return elements * terms.dtype_bytes


def fit(profile: ModelProfile, measurements: list[Measurement]) -> CalibrationEntry:
    """The constants of `profile` fitted to measurements of one family on one GPU kind.

    Raises NotEnoughMeasurements when `requirements` are not met, or when the best fit is not
    physical (a workspace factor <= 0, a negative overhead): the measurements then do not follow
    the estimator's form (mixed models or GPU kinds, or not this model family).
    """
    import numpy as np

    first = measurements[0] if measurements else None
    group = f"{profile.name} on {first.gpu_name!r}" if first else profile.name
    missing = requirements(profile, measurements)
    if missing:
        raise NotEnoughMeasurements(f"too few CUDA measurements to calibrate {group}: {'; '.join(missing)}")
    rows, targets = [], []
    for m in measurements:
        terms = m.terms(profile)
        fixed = {
            "denoise": terms.weights_denoise,
            "decode": terms.weights_decode + terms.video_bytes,
        }
        for column, phase in enumerate(PHASES, start=1):
            if phase in m.peaks:
                peak = m.peaks[phase]
                row = [GIB / peak, 0.0, 0.0]  # overhead in GiB, relative residuals
                row[column] = _regressor(terms, phase) / peak
                rows.append(row)
                targets.append((peak - fixed[phase]) / peak)
    solution, *_ = np.linalg.lstsq(np.array(rows), np.array(targets), rcond=None)
    overhead_gib, workspace, decode_workspace = (round(float(x), FACTOR_DECIMALS) for x in solution)
    if workspace <= 0 or decode_workspace <= 0 or overhead_gib < 0:
        raise NotEnoughMeasurements(
            f"the measurements of {group} do not follow the estimator's form: the best fit has "
            f"overhead {overhead_gib:.2f} GiB, workspace factors {workspace:.3f} (denoise) and "
            f"{decode_workspace:.3f} (decode); check that they come from one model family on one GPU kind"
        )
    fitted = replace(
        profile, workspace_factor=workspace, decode_workspace_factor=decode_workspace,
        overhead_bytes=int(round(overhead_gib * GIB)),
    )
    quality = ErrorSummary.of(fitted, measurements)
    return CalibrationEntry(
        family=profile.name,
        gpu_name=first.gpu_name,
        workspace_factor=workspace,
        decode_workspace_factor=decode_workspace,
        overhead_bytes=fitted.overhead_bytes,
        points=len(measurements),
        denoise_points=sum(1 for m in measurements if "denoise" in m.peaks),
        decode_points=sum(1 for m in measurements if "decode" in m.peaks),
        median_error=quality.median_error,
        worst_error=quality.worst_error,
        before=ErrorSummary.of(profile, measurements),
        sources=sorted({m.source for m in measurements if m.source}),
    )


def group(measurements: list[Measurement]) -> dict[tuple[str, str], list[Measurement]]:
    """Measurements by (model family, GPU name), in a stable order."""
    groups: dict[tuple[str, str], list[Measurement]] = {}
    for m in measurements:
        groups.setdefault((m.family, m.gpu_name), []).append(m)
    return dict(sorted(groups.items()))
