"""The image-to-video model families farm renders, and each family's parameter rules.

A family is one diffusers pipeline class with its own constraints: which frame counts it
accepts (Wan and HunyuanVideo take 4k+1 frames, LTX-Video 8k+1), what its sizes must be
multiples of, its native frame rate, whether it reads a prompt at all (Stable Video Diffusion
does not), and what kind of guidance it applies. `check_params` turns a violation into a
message that names the value and the nearest allowed one, so a manifest is refused at
validation with what to write instead, not by the pipeline minutes later on a GPU.

The family of a model is found from its weights (`model_index.json`'s `_class_name`, read by
`farm.models.registry`); known references (`tiny`, `tiny:wan`, Hub ids that are known to work)
are mapped here without reading anything. Pure code: no torch, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

TINY_PREFIX = "tiny:"
RANDOM_PREFIX = "random:"

CFG = "classifier-free"  # guidance_scale weighs a conditional against an unconditional pass
FRAME_RAMP = "frame-ramp"  # SVD: guidance rises from 1 to guidance_scale over the frames
EMBEDDED = "embedded"  # a guidance-distilled model: guidance_scale is an input, one pass per step


@dataclass(frozen=True)
class FamilyRules:
    """What one model family accepts, and what it is."""

    name: str  # farm's name: "i2vgen-xl", "wan", ...
    title: str
    pipeline_classes: tuple[str, ...]  # model_index.json `_class_name` values of this family
    frame_step: int  # frames = frame_step * k + frame_offset
    frame_offset: int
    min_frames: int
    max_frames: int
    size_multiple: int  # width and height must be multiples of this
    native_fps: int
    takes_prompt: bool
    guidance: str
    default_frames: int
    hub_ids: tuple[str, ...] = ()  # Hub ids known to load with this family's adapter
    tiny: str = ""  # the tiny random-weight variant, e.g. "tiny:wan"
    savers: tuple[str, ...] = ()  # memory savers its adapter applies (farm.core.vram names)
    fixed_sizes: tuple[tuple[int, int], ...] = ()  # (width, height) it only works at; () = any multiple
    max_pixels: int = 1024 * 1792
    notes: str = ""
    # Values used where an item sets none itself (the presets' steps and guidance are I2VGen-XL's).
    default_guidance: float | None = None
    default_steps: int | None = None
    # Frame counts the degrade ladder steps down through (each one the family accepts).
    frame_ladder: tuple[int, ...] = (32, 24, 16, 8)
    # The memory-saver levels the ladder climbs, cheapest first (each adds to the one before).
    saver_levels: tuple[tuple[str, ...], ...] = (
        (), ("vae_slicing", "vae_tiling"), ("vae_slicing", "vae_tiling", "ff_chunking"),
        ("vae_slicing", "vae_tiling", "ff_chunking", "cpu_offload"),
    )

    def allowed_frames(self) -> list[int]:
        return [f for f in range(self.min_frames, self.max_frames + 1) if (f - self.frame_offset) % self.frame_step == 0]

    def nearest_frames(self, frames: int) -> int:
        return min(self.allowed_frames(), key=lambda f: (abs(f - frames), f))

    def frames_rule(self) -> str:
        if self.frame_step == 1:
            return f"from {self.min_frames} to {self.max_frames} frames"
        form = f"{self.frame_step}k+{self.frame_offset}" if self.frame_offset else f"a multiple of {self.frame_step}"
        return f"{form} frames from {self.min_frames} to {self.max_frames} (e.g. {', '.join(map(str, self.allowed_frames()[:4]))}, ...)"

    def size_rule(self) -> str:
        if self.fixed_sizes:
            return "only " + " or ".join(f"{w}x{h}" for w, h in self.fixed_sizes)
        return f"width and height multiples of {self.size_multiple}"

    def to_dict(self) -> dict:
        return {
            "family": self.name,
            "title": self.title,
            "pipelines": list(self.pipeline_classes),
            "frames": self.frames_rule(),
            "sizes": self.size_rule(),
            "native_fps": self.native_fps,
            "prompt": "used" if self.takes_prompt else "not used (image only)",
            "guidance": self.guidance,
            "default_frames": self.default_frames,
            "tiny": self.tiny,
            "hub_ids": list(self.hub_ids),
            "savers": list(self.savers),
            "notes": self.notes,
        }


@dataclass(frozen=True)
class ParamIssue:
    """A parameter a family does not accept: the field, the value, and what to use instead."""

    field: str
    value: object
    message: str
    nearest: object = None


@dataclass(frozen=True)
class ParamCheck:
    issues: list[ParamIssue] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def check_params(rules: FamilyRules, *, width: int, height: int, frames: int, prompt: str | None) -> ParamCheck:
    """Every way (width, height, frames, prompt) breaks `rules`, each with the nearest allowed value."""
    issues: list[ParamIssue] = []
    warnings: list[str] = []
    if frames not in rules.allowed_frames():
        nearest = rules.nearest_frames(frames)
        issues.append(ParamIssue(
            "frames", frames,
            f"{frames} is not allowed for {rules.title}: it renders {rules.frames_rule()}; "
            f"the nearest allowed is {nearest}", nearest,
        ))
    if rules.fixed_sizes and (width, height) not in rules.fixed_sizes:
        nearest_size = min(rules.fixed_sizes, key=lambda s: abs(s[0] - width) + abs(s[1] - height))
        issues.append(ParamIssue(
            "resolution", f"{width}x{height}",
            f"{width}x{height} is not allowed for {rules.title}: it renders {rules.size_rule()}; "
            f"use resolution {min(nearest_size)} with aspect {_aspect_of(*nearest_size)}", nearest_size,
        ))
    elif width % rules.size_multiple or height % rules.size_multiple:
        nearest_size = (_round_to(width, rules.size_multiple), _round_to(height, rules.size_multiple))
        issues.append(ParamIssue(
            "resolution", f"{width}x{height}",
            f"{width}x{height} is not allowed for {rules.title}: {rules.size_rule()}; "
            f"the nearest allowed is {nearest_size[0]}x{nearest_size[1]}", nearest_size,
        ))
    if width * height > rules.max_pixels:
        issues.append(ParamIssue(
            "resolution", f"{width}x{height}",
            f"{width}x{height} is larger than {rules.title} renders (at most {rules.max_pixels} pixels per frame); "
            "use a lower resolution",
        ))
    if not rules.takes_prompt and prompt and prompt.strip():
        warnings.append(f"{rules.title} is conditioned on the image only: the prompt is not used")
    return ParamCheck(issues, warnings)


def adapt_params(rules: FamilyRules, values: dict, explicit: set[str]) -> tuple[dict, list[str]]:
    """Values the item did not set itself, moved to what the family renders: a preset's frame
    count to the nearest the family accepts, its fps, guidance and steps to the family's own.
    Returns the values and a note per change (explicit values are never changed: `check_params`
    refuses them with the nearest allowed instead)."""
    values = dict(values)
    notes: list[str] = []
    if "frames" not in explicit and values.get("frames") not in rules.allowed_frames():
        nearest = rules.nearest_frames(values["frames"])
        notes.append(f"frames {values['frames']} -> {nearest} ({rules.title} renders {rules.frames_rule()})")
        values["frames"] = nearest
    if "fps" not in explicit and rules.name != DEFAULT_FAMILY:
        values["fps"] = rules.native_fps
    if "guidance_scale" not in explicit and rules.default_guidance is not None:
        values["guidance_scale"] = rules.default_guidance
    if "steps" not in explicit and rules.default_steps is not None:
        values["steps"] = rules.default_steps
    return values, notes


def _round_to(value: int, multiple: int) -> int:
    return max(multiple, round(value / multiple) * multiple)


def _aspect_of(width: int, height: int) -> str:
    ratio = width / height
    for name, value in (("1:1", 1.0), ("16:9", 16 / 9), ("9:16", 9 / 16), ("3:2", 1.5), ("2:3", 2 / 3)):
        if abs(ratio - value) < 0.02:
            return name
    return f"{width}:{height}"


# Savers by name (the constants live in farm.core.vram; repeated here as strings to stay import-free).
_UNET_SAVERS = ("vae_slicing", "vae_tiling", "ff_chunking", "cpu_offload")
_DIT_SAVERS = ("vae_slicing", "vae_tiling", "cpu_offload", "group_offload", "fp8_layerwise")
# Transformers: the VAE first, then the whole pipeline offloaded component by component, then the
# denoiser streamed layer by layer (CUDA streams) with its weights stored in fp8.
_DIT_LEVELS = (
    (), ("vae_slicing", "vae_tiling"), ("vae_slicing", "vae_tiling", "cpu_offload"),
    ("vae_slicing", "vae_tiling", "group_offload", "fp8_layerwise"),
)

I2VGEN_XL = FamilyRules(
    name="i2vgen-xl", title="I2VGen-XL", pipeline_classes=("I2VGenXLPipeline",),
    frame_step=1, frame_offset=0, min_frames=8, max_frames=32, size_multiple=64, native_fps=8,
    takes_prompt=True, guidance=CFG, default_frames=16,
    hub_ids=("ali-vilab/i2vgen-xl",), tiny="tiny", savers=_UNET_SAVERS,
    notes="the default; diffusers keeps its pipeline under pipelines/deprecated",
)
WAN = FamilyRules(
    name="wan", title="Wan 2.x image-to-video", pipeline_classes=("WanImageToVideoPipeline",),
    frame_step=4, frame_offset=1, min_frames=5, max_frames=121, size_multiple=16, native_fps=16,
    takes_prompt=True, guidance=CFG, default_frames=81,
    hub_ids=("Wan-AI/Wan2.1-I2V-14B-480P-Diffusers", "Wan-AI/Wan2.1-I2V-14B-720P-Diffusers",
             "Wan-AI/Wan2.2-I2V-A14B-Diffusers"),
    tiny="tiny:wan", savers=_DIT_SAVERS, saver_levels=_DIT_LEVELS, default_guidance=5.0, default_steps=40,
    frame_ladder=(121, 81, 61, 49, 33, 17, 9, 5),
    notes="480P weights for 480p, 720P weights for 720p; Wan 2.2 A14B has two experts (high and low noise)",
)
LTX_VIDEO = FamilyRules(
    name="ltx-video", title="LTX-Video", pipeline_classes=("LTXImageToVideoPipeline",),
    frame_step=8, frame_offset=1, min_frames=9, max_frames=257, size_multiple=32, native_fps=24,
    takes_prompt=True, guidance=CFG, default_frames=121,
    hub_ids=("Lightricks/LTX-Video",), tiny="tiny:ltx", savers=_DIT_SAVERS, saver_levels=_DIT_LEVELS,
    default_guidance=3.0, default_steps=40,
    frame_ladder=(257, 161, 121, 97, 65, 49, 33, 17, 9),
    notes="fast: a 32x spatial, 8x temporal VAE",
)
# CogVideoX: 8k+1 frames (the VAE decodes an even latent count into 4 frames per latent frame,
# not 4k+1), multiples of 16 (8x VAE, 2x2 patches). The reference CogVideoX-5b-I2V has learned
# positional embeddings: any size but 720x480 raises in CogVideoXPatchEmbed, any frame count but
# 49 silently drops the learned table: those are its rules (MODEL_RULES); the family's own, for
# CogVideoX1.5-5B-I2V, tiny:cogvideox and local folders, are the wider ones below.
COGVIDEOX = FamilyRules(
    name="cogvideox", title="CogVideoX image-to-video", pipeline_classes=("CogVideoXImageToVideoPipeline",),
    frame_step=8, frame_offset=1, min_frames=9, max_frames=161, size_multiple=16, native_fps=8,
    takes_prompt=True, guidance=CFG, default_frames=49,
    hub_ids=("THUDM/CogVideoX-5b-I2V", "THUDM/CogVideoX1.5-5B-I2V"), tiny="tiny:cogvideox",
    savers=_DIT_SAVERS, saver_levels=_DIT_LEVELS,
    default_guidance=6.0, default_steps=50, frame_ladder=(49, 33, 25, 17, 9),
    notes="CogVideoX-5b-I2V renders only 720x480 and 49 frames (learned positional embeddings: "
          "resolution 480, aspect 3:2); CogVideoX1.5-5B-I2V any multiple of 16 and 8k+1 frames (81 at 16 fps)",
)
SVD = FamilyRules(
    name="svd", title="Stable Video Diffusion", pipeline_classes=("StableVideoDiffusionPipeline",),
    # Sizes: the pipeline's check_inputs takes multiples of 8, and its UNet forwards the skip
    # sizes to its upsamplers, so the latent need not be a multiple of 8 (the pixels of 64).
    # Frames: with 1 the guidance ramp is only min_guidance_scale, and the pipeline (which
    # encoded the image for guidance) fails to assemble the UNet input; 25 is img2vid-xt's
    # trained clip length (unet.config.num_frames; img2vid: 14), not enforced by the pipeline.
    frame_step=1, frame_offset=0, min_frames=2, max_frames=25, size_multiple=8, native_fps=7,
    takes_prompt=False, guidance=FRAME_RAMP, default_frames=14,
    hub_ids=("stabilityai/stable-video-diffusion-img2vid", "stabilityai/stable-video-diffusion-img2vid-xt"),
    tiny="tiny:svd", savers=("vae_slicing", "ff_chunking", "cpu_offload"),
    saver_levels=((), ("vae_slicing",), ("vae_slicing", "ff_chunking"), ("vae_slicing", "ff_chunking", "cpu_offload")),
    default_guidance=3.0, default_steps=25,
    frame_ladder=(25, 14, 8, 4),
    notes="image only (a prompt is recorded as unused); 14 frames (img2vid) or 25 (img2vid-xt) at 1024x576",
)
HUNYUAN_VIDEO = FamilyRules(
    name="hunyuan-video", title="HunyuanVideo image-to-video", pipeline_classes=("HunyuanVideoImageToVideoPipeline",),
    frame_step=4, frame_offset=1, min_frames=5, max_frames=129, size_multiple=16, native_fps=24,
    takes_prompt=True, guidance=EMBEDDED, default_frames=129,
    hub_ids=("hunyuanvideo-community/HunyuanVideo-I2V",), tiny="tiny:hunyuan",
    savers=_DIT_SAVERS, saver_levels=_DIT_LEVELS,
    default_guidance=6.0, default_steps=50, frame_ladder=(129, 97, 65, 49, 33, 17, 9, 5),
    notes="a LLaVA text-image encoder; guidance is distilled into the model (one pass per step)",
)

# Models of a family with narrower rules than the family's (keyed by lower-case Hub id).
MODEL_RULES: dict[str, FamilyRules] = {
    "thudm/cogvideox-5b-i2v": replace(COGVIDEOX, title="CogVideoX-5b-I2V", min_frames=49, max_frames=49,
                                      fixed_sizes=((720, 480),), frame_ladder=(49,)),
    "thudm/cogvideox1.5-5b-i2v": replace(COGVIDEOX, title="CogVideoX1.5-5B-I2V", native_fps=16, default_frames=81,
                                         frame_ladder=(161, 81, 49, 33, 17, 9)),
}

FAMILIES: dict[str, FamilyRules] = {f.name: f for f in (I2VGEN_XL, WAN, LTX_VIDEO, COGVIDEOX, SVD, HUNYUAN_VIDEO)}
DEFAULT_FAMILY = I2VGEN_XL.name
_BY_PIPELINE = {cls: family for family in FAMILIES.values() for cls in family.pipeline_classes}
_BY_TINY = {family.tiny: family for family in FAMILIES.values() if family.tiny}
_BY_HUB_ID = {hub_id.lower(): family for family in FAMILIES.values() for hub_id in family.hub_ids}


class UnknownFamilyError(ValueError):
    """Weights of a pipeline class farm has no adapter for."""


def family_for_pipeline_class(class_name: str, *, ref: str = "") -> FamilyRules:
    """The family of a `model_index.json` `_class_name`, or UnknownFamilyError naming the supported ones."""
    family = _BY_PIPELINE.get(class_name)
    if family is None:
        where = f"model {ref!r} is" if ref else "these weights are"
        supported = ", ".join(sorted(_BY_PIPELINE))
        raise UnknownFamilyError(
            f"{where} a {class_name!r} pipeline, which farm has no adapter for; supported pipelines: {supported}"
        )
    return family


def rules_for(ref: str, family: FamilyRules) -> FamilyRules:
    """The rules `ref` is checked against: its model's own where narrower (MODEL_RULES), else its family's."""
    ref = ref.strip()
    if ref.startswith(RANDOM_PREFIX):
        ref = ref[len(RANDOM_PREFIX):]
    return MODEL_RULES.get(ref.lower(), family)


def known_family(ref: str) -> FamilyRules | None:
    """The family of a reference farm knows without reading weights: `tiny`, `tiny:X`,
    `random:HUB_ID` and the Hub ids known to work. None: it must be read from the weights."""
    ref = ref.strip()
    if ref in _BY_TINY:
        return _BY_TINY[ref]
    if ref.startswith(TINY_PREFIX):
        names = ", ".join(sorted(_BY_TINY))
        raise UnknownFamilyError(f"{ref!r} is not a tiny model farm builds; use one of {names}")
    if ref.startswith(RANDOM_PREFIX):
        ref = ref[len(RANDOM_PREFIX):]
    return _BY_HUB_ID.get(ref.lower())
