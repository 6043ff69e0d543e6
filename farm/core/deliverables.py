"""Deliverables: the publish-ready files made from a committed render, as validated values only.

A manifest names deliverables in its `defaults` or on an item: a built-in preset by name
(`vertical`, `square`, `landscape`, `web`, `fps30`, `fade`, `gif`, `webp`, `poster`: the seeds'
ffmpeg recipes) or a mapping that starts from a preset (or from nothing) and sets validated
fields: size, fit, pad_color, fps, interpolate, crf, codec, container, fade_in_s, fade_out_s,
max_bytes. Nothing else is accepted, and no value reaches ffmpeg as text the user wrote: every
option `ffmpeg_args` emits is built here from a Literal, a bounded integer or a finite float,
so a manifest can neither inject options nor name a path (the output key is the item id and
the deliverable's name, both restricted to `[a-z0-9_.-]`).

`Deliverable` is the resolved form (every field settled), with a `digest` that changes when
anything that shapes the file changes: a rerun makes again exactly the deliverables whose
digest differs from the one its item's sidecar records. Pure: no I/O, no ffmpeg here
(`farm.media.deliverables` runs it).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import asdict, dataclass, replace
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictBool, StrictInt, StrictStr, ValidationError

NAME_PATTERN = r"[a-z][a-z0-9_-]{0,31}"
MAX_DELIVERABLES = 16
SIDE_RANGE = (16, 4096)  # pixels per side; even (yuv420p)
MAX_PIXELS = 4096 * 2304  # 4K DCI at 16:9: no 1e6 x 1e6 frames
FPS_RANGE = (1, 60)
FADE_MAX_S = 30.0
MAX_BYTES_RANGE = (1024, 4 * 1024**3)
CRF_MAX = {"h264": 51, "vp9": 63, "av1": 63}
DEFAULT_CRF = 23  # the seeds' re-encode: libx264 -crf 23 -preset fast
X264_PRESET = "fast"

Codec = Literal["h264", "vp9", "av1"]
Container = Literal["mp4", "webm", "mkv", "gif", "webp", "png"]
Fit = Literal["pad", "crop", "scale"]
VIDEO_CONTAINERS = ("mp4", "webm", "mkv")
ANIMATION_CONTAINERS = ("gif", "webp")
# Which codecs each video container carries (and what a container picks when no codec is set).
CONTAINER_CODECS = {"mp4": ("h264", "av1"), "webm": ("vp9", "av1"), "mkv": ("h264", "vp9", "av1")}
# ffmpeg encoders, best first: the first one the build has is used.
ENCODERS = {"h264": ("libx264",), "vp9": ("libvpx-vp9",), "av1": ("libsvtav1", "libaom-av1", "librav1e"),
            "gif": ("gif",), "webp": ("libwebp_anim", "libwebp"), "png": ("png",)}
NAMED_COLOURS = {"black": "000000", "white": "ffffff", "gray": "808080", "grey": "808080"}

FIELD_HELP = {
    "name": f"a name of 1 to 32 characters matching {NAME_PATTERN} (it names the output folder)",
    "preset": "a built-in deliverable to start from: vertical, square, landscape, web, fps30, fade, gif, webp "
    "or poster",
    "size": f"WIDTHxHEIGHT (or [WIDTH, HEIGHT]), even numbers from {SIDE_RANGE[0]} to {SIDE_RANGE[1]}, "
    f"at most {MAX_PIXELS} pixels",
    "fit": "pad (scale to fit, then pad), crop (scale to fill, then crop) or scale (stretch)",
    "pad_color": "#RRGGBB or one of " + ", ".join(NAMED_COLOURS),
    "fps": f"an integer from {FPS_RANGE[0]} to {FPS_RANGE[1]}",
    "interpolate": "true (motion-interpolated frames) or false (frames duplicated); needs fps",
    "crf": "an integer quality (lower is better): 0-51 for h264, 0-63 for vp9 and av1",
    "codec": "h264, vp9 or av1",
    "container": "mp4, webm, mkv (video), gif, webp (animated previews) or png (the first frame)",
    "fade_in_s": f"seconds from 0 to {FADE_MAX_S:g}",
    "fade_out_s": f"seconds from 0 to {FADE_MAX_S:g}",
    "max_bytes": f"an integer from {MAX_BYTES_RANGE[0]} to {MAX_BYTES_RANGE[1]}",
}


class DeliverableError(ValueError):
    """A deliverable that cannot be made as written; `field` and `value` say where."""

    def __init__(self, message: str, field: str | None = None, value: Any = None):
        super().__init__(message)
        self.field = field
        self.value = value


def _parse_size(value: Any) -> Any:
    """`"1080x1920"` and `[1080, 1920]` alike; anything else is left for the type check."""
    if isinstance(value, str):
        match = re.fullmatch(r"(\d+)[xX](\d+)", value) if len(value) <= 40 else None
        if match:
            return (int(match.group(1)), int(match.group(2)))
    if isinstance(value, list):
        return tuple(value)
    return value


def _parse_colour(value: Any) -> Any:
    if isinstance(value, str):
        lowered = value.lower()
        if lowered in NAMED_COLOURS:
            return "#" + NAMED_COLOURS[lowered]
        if re.fullmatch(r"#[0-9a-f]{6}", lowered):
            return lowered
    return value


Side = Annotated[StrictInt, Field(ge=SIDE_RANGE[0], le=SIDE_RANGE[1], multiple_of=2)]
Size = Annotated[tuple[Side, Side], BeforeValidator(_parse_size)]
Colour = Annotated[StrictStr, BeforeValidator(_parse_colour), Field(pattern=r"^#[0-9a-f]{6}$")]
Seconds = Annotated[float, Field(ge=0.0, le=FADE_MAX_S, allow_inf_nan=False, strict=False)]


def _finite_number(value: Any) -> Any:
    """Seconds as an int or a float, never a bool or a string."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError("a number of seconds is required")
    return value


FadeSeconds = Annotated[Seconds, BeforeValidator(_finite_number)]


class DeliverableFields(BaseModel):
    """The fields a custom deliverable may set (each optional: unset means the preset's)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    size: Size | None = None
    fit: Fit | None = None
    pad_color: Colour | None = None
    fps: Annotated[StrictInt, Field(ge=FPS_RANGE[0], le=FPS_RANGE[1])] | None = None
    interpolate: StrictBool | None = None
    crf: Annotated[StrictInt, Field(ge=0, le=63)] | None = None
    codec: Codec | None = None
    container: Container | None = None
    fade_in_s: FadeSeconds | None = None
    fade_out_s: FadeSeconds | None = None
    max_bytes: Annotated[StrictInt, Field(ge=MAX_BYTES_RANGE[0], le=MAX_BYTES_RANGE[1])] | None = None


PRESETS: dict[str, dict[str, Any]] = {
    # The seeds' vertical recipe: scale=1080:1920:force_original_aspect_ratio=decrease,pad=...; crf 23 fast.
    "vertical": {"size": (1080, 1920), "fit": "pad"},
    "square": {"size": (1080, 1080), "fit": "pad"},
    "landscape": {"size": (1920, 1080), "fit": "pad"},
    "web": {"crf": DEFAULT_CRF},  # H.264, preset fast, +faststart: what every video deliverable gets
    "fps30": {"fps": 30},  # the seeds' `-r 30`: frames duplicated unless interpolate is set
    "fade": {"fade_in_s": 0.5, "fade_out_s": 0.5},
    "gif": {"container": "gif", "fps": 10, "max_bytes": 8 * 1024**2},
    "webp": {"container": "webp", "max_bytes": 8 * 1024**2},
    "poster": {"container": "png"},
}
PresetName = Literal["vertical", "square", "landscape", "web", "fps30", "fade", "gif", "webp", "poster"]


class DeliverableSpec(DeliverableFields):
    """One deliverable as a manifest writes it as a mapping: a name, a preset to start from, fields."""

    name: Annotated[StrictStr, Field(pattern=f"^{NAME_PATTERN}$")] | None = None
    preset: PresetName | None = None


def _entry(value: Any) -> Any:
    """A bare string is a preset's name."""
    return {"preset": value} if isinstance(value, str) else value


DeliverableEntry = Annotated[DeliverableSpec, BeforeValidator(_entry)]
DeliverableList = Annotated[list[DeliverableEntry], Field(max_length=MAX_DELIVERABLES)]


@dataclass(frozen=True)
class Deliverable:
    """A deliverable with every field settled: what `ffmpeg_args` builds and the sidecar records."""

    name: str
    container: str = "mp4"
    codec: str | None = "h264"
    size: tuple[int, int] | None = None  # None: the render's own size
    fit: str = "pad"
    pad_color: str = "#000000"
    fps: int | None = None  # None: the render's own rate
    interpolate: bool = False
    crf: int | None = DEFAULT_CRF
    fade_in_s: float = 0.0
    fade_out_s: float = 0.0
    max_bytes: int | None = None

    @property
    def kind(self) -> str:
        """video, animation or image."""
        if self.container in VIDEO_CONTAINERS:
            return "video"
        return "animation" if self.container in ANIMATION_CONTAINERS else "image"

    @property
    def extension(self) -> str:
        return self.container

    def to_dict(self) -> dict[str, Any]:
        values = asdict(self)
        values["size"] = list(self.size) if self.size else None
        return values

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Deliverable:
        values = dict(values)
        values["size"] = tuple(values["size"]) if values.get("size") else None
        return cls(**values)

    @property
    def digest(self) -> str:
        """Changes when anything that shapes the file changes (the sidecar records it)."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]


def resolve(spec: DeliverableSpec) -> Deliverable:
    """Settle one validated entry: the preset's values, then the entry's own; then the rules
    between fields. Raises DeliverableError naming the field."""
    if spec.name is None and spec.preset is None:
        raise DeliverableError("a custom deliverable needs a `name` (and may start from a `preset`)", "name")
    values: dict[str, Any] = dict(PRESETS[spec.preset]) if spec.preset else {}
    changed = {k: v for k, v in spec.model_dump(exclude={"name", "preset"}).items() if v is not None}
    if spec.name is None and changed:
        # deliverables/NAME/ holds one kind of file: a changed preset is another deliverable.
        raise DeliverableError(f"a changed {spec.preset} ({', '.join(changed)}) is a deliverable of its own; give it "
                               "a `name`", "name")
    values.update(changed)
    container = values.get("container", "mp4")
    codec = values.get("codec")
    if container in VIDEO_CONTAINERS:
        codec = codec or CONTAINER_CODECS[container][0]
        if codec not in CONTAINER_CODECS[container]:
            raise DeliverableError(
                f"codec {codec} cannot go in a {container} file; use one of {', '.join(CONTAINER_CODECS[container])}"
                f" (or container {next(c for c in VIDEO_CONTAINERS if codec in CONTAINER_CODECS[c])})",
                "codec", codec)
        crf = values.get("crf", DEFAULT_CRF if codec == "h264" else 32)
        if crf > CRF_MAX[codec]:
            raise DeliverableError(f"crf {crf} is above {codec}'s {CRF_MAX[codec]}", "crf", crf)
    else:
        for field_name in ("codec", "crf"):
            if values.get(field_name) is not None:
                raise DeliverableError(f"{field_name} applies to video containers only, not {container}; remove it",
                                       field_name, values[field_name])
        codec, crf = None, None
    if container == "png":
        for field_name in ("fps", "interpolate", "fade_in_s", "fade_out_s"):
            if values.get(field_name):
                raise DeliverableError(f"{field_name} does not apply to a png (the first frame); remove it",
                                       field_name, values[field_name])
    if values.get("interpolate") and values.get("fps") is None:
        raise DeliverableError("interpolate needs an fps to interpolate to; set fps (e.g. 30)", "interpolate", True)
    size = values.get("size")
    if size is not None and size[0] * size[1] > MAX_PIXELS:
        raise DeliverableError(f"{size[0]}x{size[1]} is more than {MAX_PIXELS} pixels; choose a smaller size",
                               "size", f"{size[0]}x{size[1]}")
    return Deliverable(
        name=spec.name or spec.preset,
        container=container,
        codec=codec,
        size=tuple(size) if size else None,
        fit=values.get("fit", "pad"),
        pad_color=values.get("pad_color", "#000000"),
        fps=values.get("fps"),
        interpolate=bool(values.get("interpolate", False)),
        crf=crf,
        fade_in_s=float(values.get("fade_in_s", 0.0)),
        fade_out_s=float(values.get("fade_out_s", 0.0)),
        max_bytes=values.get("max_bytes"),
    )


def resolve_all(entries: list[DeliverableSpec]) -> tuple[Deliverable, ...]:
    """Every entry settled; raises DeliverableError (field `deliverables.N.FIELD`) on the first
    problem, or on a name used twice."""
    resolved: list[Deliverable] = []
    for index, entry in enumerate(entries):
        try:
            deliverable = resolve(entry)
        except DeliverableError as exc:
            raise DeliverableError(str(exc), f"deliverables.{index}" + (f".{exc.field}" if exc.field else ""),
                                   exc.value) from None
        if any(d.name == deliverable.name for d in resolved):
            raise DeliverableError(f"the name {deliverable.name!r} is used twice; give each deliverable its own name",
                                   f"deliverables.{index}.name", deliverable.name)
        resolved.append(deliverable)
    return tuple(resolved)


def parse_entries(raw: Any) -> tuple[Deliverable, ...]:
    """A raw `deliverables` value (a list of names and mappings) validated and settled: for the
    CLI's flags and `farm post`. Raises DeliverableError."""
    from pydantic import TypeAdapter

    try:
        entries = TypeAdapter(DeliverableList).validate_python(raw)
    except ValidationError as exc:
        error = exc.errors(include_url=False)[0]
        where = ".".join(str(p) for p in ("deliverables", *error["loc"]))
        raise DeliverableError(f"{excerpt_value(error.get('input'))} is not allowed: {error['msg']}", where,
                               error.get("input")) from None
    return resolve_all(entries)


def excerpt_value(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def check_for_clip(deliverables: tuple[Deliverable, ...], *, frames: int, fps: int) -> list[DeliverableError]:
    """What cannot fit a clip of `frames` at `fps` (the fades), field `deliverables.N.FIELD`."""
    duration = frames / fps
    problems = []
    for index, d in enumerate(deliverables):
        if d.fade_in_s + d.fade_out_s > duration + 1e-9:
            problems.append(DeliverableError(
                f"fades of {d.fade_in_s:g} s + {d.fade_out_s:g} s are longer than the {duration:g} s clip "
                f"({frames} frames at {fps} fps); shorten them", f"deliverables.{index}.fade_in_s", d.fade_in_s))
    return problems


def missing_encoders(deliverables: tuple[Deliverable, ...], available: set[str]) -> list[DeliverableError]:
    """Deliverables whose codec or container this ffmpeg build cannot encode."""
    problems = []
    for index, d in enumerate(deliverables):
        wanted = d.codec or d.container
        if not any(encoder in available for encoder in ENCODERS[wanted]):
            problems.append(DeliverableError(
                f"this farm's ffmpeg has no {wanted} encoder ({' or '.join(ENCODERS[wanted])}); choose another "
                f"{'codec' if d.codec else 'container'}", f"deliverables.{index}.{'codec' if d.codec else 'container'}",
                wanted))
    return problems


def parse_encoders(listing: str) -> set[str]:
    """Encoder names from `ffmpeg -hide_banner -encoders` output."""
    names = set()
    for line in listing.splitlines():
        match = re.match(r"\s*[VAS][.A-Z]{5}\s+(\S+)", line)
        if match:
            names.add(match.group(1))
    return names


def encoder_for(deliverable: Deliverable, available: set[str]) -> str:
    wanted = deliverable.codec or deliverable.container
    for encoder in ENCODERS[wanted]:
        if encoder in available:
            return encoder
    raise DeliverableError(f"this farm's ffmpeg has no {wanted} encoder", "codec", wanted)


# --- the ffmpeg command: built from settled values only ---------------------------------------


@dataclass(frozen=True)
class SourceClip:
    """What the committed render is: its size, rate and length (from the sidecar)."""

    width: int
    height: int
    fps: int
    frames: int

    @property
    def duration_s(self) -> float:
        return self.frames / self.fps


def output_size(d: Deliverable, source: SourceClip, scale: float = 1.0) -> tuple[int, int]:
    """The file's frame size: the deliverable's, else the source's; times `scale` (a size cap's
    retry), kept even."""
    width, height = d.size or (source.width, source.height)
    if scale != 1.0:
        width, height = max(16, int(width * scale)), max(16, int(height * scale))
    return width - width % 2, height - height % 2


def _geometry(d: Deliverable, source: SourceClip, scale: float) -> list[str]:
    width, height = output_size(d, source, scale)
    if (width, height) == (source.width, source.height):
        return []
    if d.fit == "scale":
        return [f"scale={width}:{height}:flags=lanczos", "setsar=1"]
    if d.fit == "crop":
        return [f"scale={width}:{height}:force_original_aspect_ratio=increase:flags=lanczos",
                f"crop={width}:{height}", "setsar=1"]
    colour = "0x" + d.pad_color.removeprefix("#")
    return [f"scale={width}:{height}:force_original_aspect_ratio=decrease:flags=lanczos",
            f"pad={width}:{height}:(ow-iw)/2:(oh-ih)/2:color={colour}", "setsar=1"]


def output_fps(d: Deliverable, source: SourceClip) -> int:
    return d.fps or source.fps


def output_frames(d: Deliverable, source: SourceClip) -> int:
    """How many frames the file holds: the clip's length at the output rate (one for a png)."""
    if d.kind == "image":
        return 1
    return max(1, round(source.duration_s * output_fps(d, source)))


def filters(d: Deliverable, source: SourceClip, *, scale: float = 1.0, fps_scale: float = 1.0) -> list[str]:
    """The video filter chain, in order: rate, geometry, fades."""
    chain: list[str] = []
    if d.kind != "image":
        rate = output_fps(d, source)
        if fps_scale != 1.0:
            rate = max(1, int(rate * fps_scale))
        if rate != source.fps:
            # minterpolate's motion-compensated frames, or duplicated frames (the seeds' `-r 30`).
            # The interpolated clip ends at the last frame's start: the clone (tpad) keeps its
            # length, and `-frames:v` cuts it to the clip's (see ffmpeg_args).
            chain += (["tpad=stop_mode=clone:stop=2", f"minterpolate=fps={rate}:mi_mode=mci"] if d.interpolate
                      else [f"fps={rate}"])
    chain += _geometry(d, source, scale)
    duration = source.duration_s
    if d.fade_in_s > 0 and d.kind != "image":
        chain.append(f"fade=t=in:st=0:d={_seconds(min(d.fade_in_s, duration))}")
    if d.fade_out_s > 0 and d.kind != "image":
        fade_out = min(d.fade_out_s, duration)
        chain.append(f"fade=t=out:st={_seconds(duration - fade_out)}:d={_seconds(fade_out)}")
    return chain


def _seconds(value: float) -> str:
    if not math.isfinite(value):
        raise DeliverableError("a time must be finite", "fade_in_s", value)
    return f"{value:.3f}"


def ffmpeg_args(d: Deliverable, source: SourceClip, input_path: str, output_path: str, *, encoder: str,
                scale: float = 1.0, fps_scale: float = 1.0, crf_bump: int = 0, threads: int | None = None) -> list[str]:
    """The argv (after the ffmpeg executable) that makes `d` from `input_path`. Paths are the
    caller's scratch files; every other word comes from a settled field (see the module text).
    `threads`: ffmpeg's thread count (the operator's setting; None: ffmpeg's own choice)."""
    chain = filters(d, source, scale=scale, fps_scale=fps_scale)
    args = ["-hide_banner", "-nostdin", "-loglevel", "error", "-y"]
    if threads is not None:  # filters (global options), then the encoder (an output option, after -i)
        args += ["-filter_threads", str(int(threads)), "-filter_complex_threads", str(int(threads))]
    args += ["-i", input_path, "-an"]
    if threads is not None:
        args += ["-threads", str(int(threads))]
    if d.kind != "image":
        rate = output_fps(d, source) if fps_scale == 1.0 else max(1, int(output_fps(d, source) * fps_scale))
        args += ["-frames:v", str(max(1, round(source.duration_s * rate)))]
    if d.container == "png":
        args += ["-frames:v", "1"]
        if chain:
            args += ["-vf", ",".join(chain)]
        return args + ["-c:v", "png", "-f", "image2", "-update", "1", output_path]
    if d.container == "gif":
        # One palette for the whole clip: far better colour than gif's default fixed palette.
        base = ",".join(chain) + "," if chain else ""
        args += ["-filter_complex", f"[0:v]{base}split[a][b];[a]palettegen=stats_mode=diff[p];"
                 "[b][p]paletteuse=dither=bayer:bayer_scale=3"]
        return args + ["-loop", "0", "-f", "gif", output_path]
    if d.container == "webp":
        if chain:
            args += ["-vf", ",".join(chain)]
        return args + ["-c:v", encoder, "-lossless", "0", "-q:v", str(max(10, 75 - 15 * crf_bump)), "-loop", "0",
                       "-f", "webp", output_path]
    if chain:
        args += ["-vf", ",".join(chain)]
    crf = min(CRF_MAX[d.codec], (d.crf if d.crf is not None else DEFAULT_CRF) + crf_bump)
    if d.codec == "h264":
        args += ["-c:v", encoder, "-crf", str(crf), "-preset", X264_PRESET, "-pix_fmt", "yuv420p"]
    elif d.codec == "vp9":
        args += ["-c:v", encoder, "-crf", str(crf), "-b:v", "0", "-deadline", "good", "-cpu-used", "4",
                 "-row-mt", "1", "-pix_fmt", "yuv420p"]
    else:  # av1
        speed = {"libsvtav1": ["-preset", "10"], "libaom-av1": ["-cpu-used", "8", "-row-mt", "1"],
                 "librav1e": ["-speed", "10"]}[encoder]
        args += ["-c:v", encoder, "-crf", str(crf), *speed, "-pix_fmt", "yuv420p"]
    if d.container == "mp4":
        args += ["-movflags", "+faststart"]
    return args + ["-f", {"mp4": "mp4", "webm": "webm", "mkv": "matroska"}[d.container], output_path]


def capped_attempts(d: Deliverable) -> list[dict[str, Any]]:
    """The settings tried, in order, until the file fits `max_bytes`: as asked, then (animated
    previews) smaller and slower, (video) at a higher crf. One attempt when there is no cap."""
    if d.max_bytes is None:
        return [{}]
    if d.kind == "animation":
        return [{}, {"scale": 0.75}, {"scale": 0.5, "fps_scale": 0.75}, {"scale": 0.35, "fps_scale": 0.5, "crf_bump": 2}]
    if d.kind == "video":
        return [{}, {"crf_bump": 4}, {"crf_bump": 8}, {"crf_bump": 12, "scale": 0.75}]
    return [{}, {"scale": 0.75}, {"scale": 0.5}]


def with_name(d: Deliverable, name: str) -> Deliverable:
    return replace(d, name=name)
