"""Generation parameters: allowed ranges, presets, frame sizes, and how layers of overrides resolve.

Defaults come from the original single-GPU app (the seeds): 512p, 16 frames, 8 fps, 50 steps,
guidance 9.0. A value is resolved from, lowest first: the `standard` preset, the manifest's
`defaults` (its preset, then its explicit fields), CLI flags, then the item (its preset, then its
explicit fields). So an item's own preset beats a job-wide explicit value.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictFloat, StrictInt, StrictStr

RESOLUTIONS = (256, 480, 512, 576, 720, 768, 1024)  # 480, 576, 720: the native sizes of Wan, SVD, CogVideoX
ASPECTS = ("1:1", "16:9", "9:16", "3:2", "2:3")
# Every family's frame counts lie in this range; each family's own rule (farm.core.families,
# I2VGen-XL: 8 to 32) is checked once the item's model is known.
FRAMES_RANGE = (2, 257)
FPS_RANGE = (4, 24)
STEPS_RANGE = (10, 100)
GUIDANCE_RANGE = (1.0, 20.0)
SEED_MAX = 2**32 - 1
NEGATIVE_PROMPT_MAX_CHARS = 2000
SIZE_MULTIPLE = 64
FINE_SIZE_MULTIPLE = 16  # 3:2 and 2:3 (CogVideoX's 720x480): the transformer families' multiple

PRESETS: dict[str, dict[str, Any]] = {
    "quick": {"resolution": 512, "frames": 8, "fps": 8, "steps": 30, "guidance_scale": 9.0},
    "standard": {"resolution": 512, "frames": 16, "fps": 8, "steps": 50, "guidance_scale": 9.0},
    "high": {"resolution": 768, "frames": 24, "fps": 12, "steps": 80, "guidance_scale": 10.0},
    # The seeds' scene templates: a portrait's micro-expressions, a landscape's slow motion, an animal's movement.
    "portrait": {"resolution": 512, "frames": 8, "fps": 8, "steps": 40, "guidance_scale": 8.0},
    "landscape": {"resolution": 768, "frames": 16, "fps": 12, "steps": 60, "guidance_scale": 9.5},
    "animal": {"resolution": 512, "frames": 24, "fps": 10, "steps": 70, "guidance_scale": 10.0},
}
DEFAULT_PRESET = "standard"

PARAM_FIELDS = ("resolution", "aspect", "frames", "fps", "steps", "guidance_scale", "negative_prompt", "seed", "degrade")
DEGRADE_MODES = ("allowed", "memory_savers", "never")

# What each field accepts, in words: appended to validation errors so they say what to do.
FIELD_HELP = {
    "preset": "one of " + ", ".join(PRESETS),
    "resolution": "the short side in pixels, one of " + ", ".join(map(str, RESOLUTIONS)) + " (512 or \"512p\")",
    "aspect": "one of " + ", ".join(ASPECTS),
    "frames": "an integer the model's family accepts (I2VGen-XL, the default: from 8 to 32; Wan 4k+1, "
    "LTX-Video 8k+1: `farm models` lists every family's rule)",
    "fps": f"an integer from {FPS_RANGE[0]} to {FPS_RANGE[1]} (frames per second of the MP4)",
    "steps": f"an integer from {STEPS_RANGE[0]} to {STEPS_RANGE[1]} (denoising steps)",
    "guidance_scale": f"a number from {GUIDANCE_RANGE[0]:g} to {GUIDANCE_RANGE[1]:g}",
    "negative_prompt": f"text of at most {NEGATIVE_PROMPT_MAX_CHARS} characters",
    "seed": f"an integer from 0 to {SEED_MAX}",
    "degrade": "what may change when the GPU runs out of memory: allowed (memory savers, a bigger GPU, "
    "then lower resolution or frames), memory_savers (only changes that keep quality) or never",
}


def _parse_resolution(value: Any) -> Any:
    """Accept 512, "512" and "512p" alike; leave anything else for the type check to reject."""
    if isinstance(value, str):
        match = re.fullmatch(r"\s*(\d{1,5})\s*[pP]?\s*", value)
        if match:
            return int(match.group(1))
    return value


Resolution = Annotated[Literal[256, 480, 512, 576, 720, 768, 1024], BeforeValidator(_parse_resolution)]
Aspect = Literal["1:1", "16:9", "9:16", "3:2", "2:3"]
PresetName = Literal["quick", "standard", "high", "portrait", "landscape", "animal"]
DegradeMode = Literal["allowed", "memory_savers", "never"]
Frames = Annotated[StrictInt, Field(ge=FRAMES_RANGE[0], le=FRAMES_RANGE[1])]
Fps = Annotated[StrictInt, Field(ge=FPS_RANGE[0], le=FPS_RANGE[1])]
Steps = Annotated[StrictInt, Field(ge=STEPS_RANGE[0], le=STEPS_RANGE[1])]
Guidance = Annotated[StrictFloat, Field(ge=GUIDANCE_RANGE[0], le=GUIDANCE_RANGE[1])]
NegativePrompt = Annotated[StrictStr, Field(max_length=NEGATIVE_PROMPT_MAX_CHARS)]
Seed = Annotated[StrictInt, Field(ge=0, le=SEED_MAX)]


class ParamOverrides(BaseModel):
    """Parameters a manifest's `defaults`, a CLI flag or an item may set; unset means inherit."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    preset: PresetName | None = None
    resolution: Resolution | None = None
    aspect: Aspect | None = None
    frames: Frames | None = None
    fps: Fps | None = None
    steps: Steps | None = None
    guidance_scale: Guidance | None = None
    negative_prompt: NegativePrompt | None = None
    seed: Seed | None = None
    degrade: DegradeMode | None = None

    def explicit(self) -> dict[str, Any]:
        """The parameter fields this layer sets, without the preset."""
        return {name: getattr(self, name) for name in PARAM_FIELDS if getattr(self, name) is not None}


class RenderParams(BaseModel):
    """Fully resolved parameters of one render (what was asked for, before any degradation)."""

    model_config = ConfigDict(frozen=True)

    resolution: Resolution
    aspect: Aspect = "1:1"
    frames: Frames
    fps: Fps
    steps: Steps
    guidance_scale: float
    negative_prompt: str = ""
    seed: int | None = None
    degrade: DegradeMode = "allowed"

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) in pixels."""
        return frame_size(self.resolution, self.aspect)


def resolve_params(*layers: ParamOverrides | None) -> RenderParams:
    """Merge override layers, lowest priority first, over the default preset."""
    values: dict[str, Any] = {"aspect": "1:1", "negative_prompt": "", "seed": None, "degrade": "allowed"}
    values.update(PRESETS[DEFAULT_PRESET])
    for layer in layers:
        if layer is None:
            continue
        if layer.preset is not None:
            values.update(PRESETS[layer.preset])
        values.update(layer.explicit())
    values["guidance_scale"] = float(values["guidance_scale"])
    # Every layer was validated already; skip a second validation on this hot path.
    return RenderParams.model_construct(**values)


def frame_size(resolution: int, aspect: str) -> tuple[int, int]:
    """(width, height) for a short side and an aspect; the long side is a multiple of 64."""
    if aspect == "1:1":
        return resolution, resolution
    if aspect in ("3:2", "2:3"):
        long_side = max(FINE_SIZE_MULTIPLE, round(resolution * 3 / 2 / FINE_SIZE_MULTIPLE) * FINE_SIZE_MULTIPLE)
        return (long_side, resolution) if aspect == "3:2" else (resolution, long_side)
    long_side = max(SIZE_MULTIPLE, round(resolution * 16 / 9 / SIZE_MULTIPLE) * SIZE_MULTIPLE)
    if aspect == "16:9":
        return long_side, resolution
    if aspect == "9:16":
        return resolution, long_side
    raise ValueError(f"aspect {aspect!r} is not one of {', '.join(ASPECTS)}")
