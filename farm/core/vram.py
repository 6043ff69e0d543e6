"""VRAM and compute estimates for one render, from first principles, calibrated on public figures.

Peak allocated GPU memory of a render is the larger of its two phases, plus a fixed overhead:

    denoise = resident weights + workspace x (activation elements per latent token) x tokens x dtype bytes
    decode  = resident weights + workspace x (VAE elements per pixel) x pixels per chunk x dtype bytes
              + the decoded video (fp32)
    tokens  = cfg_batch (2 with guidance) x frames x (height / 8) x (width / 8)

Activation elements per latent token count what is alive at the worst moment of a UNet pass:
the skip connections kept for the up path (every down-block output at every level) plus the
largest working set at full latent resolution, which is a transformer feed-forward (GEGLU: an
8x projection, a 4x gate and a 4x product); for I2VGen-XL the widest is the temporal
transformer at the UNet's input. Feed-forward chunking shrinks that to a chunk; attention is
then the largest. `workspace` (about 1.3) covers temporaries and allocator rounding; it is
fitted to the public figures listed in docs/vram.md, with the formula written out there.
Denoise and decode have separate workspace factors (one value unless calibrated), and
`farm calibrate` refits them and the overhead per GPU kind from measured peaks
(`farm.core.calibration`); FARM_VRAM_CALIBRATION names the file `profile_for_model` then uses.

Compute per denoising step is `frames x (a x T + b x T^2)` FLOP with T latent tokens per frame
(a linear term for convolutions and projections, a quadratic one for spatial attention), fitted
to FLOP counts of the real UNet on meta tensors. Pure code: no torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field

GIB = 1024**3
CALIBRATION_ENV = "FARM_VRAM_CALIBRATION"  # a calibration file written by `farm calibrate`

# Memory savers that keep quality, in the order the ladder turns them on.
VAE_SLICING = "vae_slicing"  # decode one frame at a time
VAE_TILING = "vae_tiling"  # decode each frame in overlapping tiles
FF_CHUNKING = "ff_chunking"  # feed-forward over chunks of the sequence
CPU_OFFLOAD = "cpu_offload"  # keep only the active component on the GPU
GROUP_OFFLOAD = "group_offload"  # the denoiser's layers streamed to the GPU as they run (CUDA streams)
FP8_LAYERWISE = "fp8_layerwise"  # the denoiser's weights stored in fp8, cast up layer by layer
SAVERS = (VAE_SLICING, VAE_TILING, FF_CHUNKING, CPU_OFFLOAD, GROUP_OFFLOAD, FP8_LAYERWISE)
# Each level adds savers; level 0 is none. Decode savers come first: they cost least.
SAVER_LEVELS: tuple[tuple[str, ...], ...] = (
    (),
    (VAE_SLICING, VAE_TILING),
    (VAE_SLICING, VAE_TILING, FF_CHUNKING),
    (VAE_SLICING, VAE_TILING, FF_CHUNKING, CPU_OFFLOAD),
)


@dataclass(frozen=True)
class ModelProfile:
    """What the estimator needs to know about a model family."""

    name: str
    component_params: dict[str, int]
    unet_channels: tuple[int, ...]
    unet_layers_per_block: int
    attention_levels: tuple[bool, ...]  # which UNet levels have spatial transformers
    ff_inner_mult: int  # GEGLU hidden size / channels
    temporal_in_width: int  # width of the temporal transformer at the UNet's input (full resolution)
    vae_decoder_top_channels: int
    latent_downsample: int
    workspace_factor: float  # denoise workspace (and decode's, unless decode_workspace_factor is set)
    overhead_bytes: int
    default_decode_chunk: int
    vae_tile_pixels: int
    flop_per_token: float  # a: FLOP per latent token per frame per step (both guidance halves)
    flop_per_token_squared: float  # b: FLOP per (tokens per frame)^2 per frame per step
    fixed_seconds: float  # per-render time outside the UNet at tier speed 1 (encode, decode, I/O)
    denoiser: str = "unet"
    decode_workspace_factor: float | None = None  # None: the same as workspace_factor
    calibration: str | None = None  # where calibrated constants came from (None: built in)
    # Diffusion transformers (Wan, LTX-Video, CogVideoX, HunyuanVideo): one token per latent
    # patch, every frame's tokens attend to each other (full 3D attention).
    architecture: str = "unet"  # "unet" or "dit"
    hidden_width: int = 0  # a DiT block's width
    dit_layers: int = 0
    patch: tuple[int, int, int] = (1, 1, 1)  # latent (frames, height, width) per token
    temporal_downsample: int = 1  # pixel frames per latent frame (4k+1 -> k+1 latent frames)
    cfg_batched: bool = True  # guidance halves in one batch (False: two passes, one at a time)
    embedded_guidance: bool = False  # guidance distilled into the model: one pass per step, never two
    family: str = ""  # farm.core.families name; "" = the profile's name

    @property
    def total_params(self) -> int:
        return sum(self.component_params.values())

    @property
    def decode_factor(self) -> float:
        return self.workspace_factor if self.decode_workspace_factor is None else self.decode_workspace_factor


I2VGENXL_PROFILE = ModelProfile(
    name="i2vgen-xl",
    component_params={
        "unet": 1_420_469_224,
        "image_encoder": 632_076_800,
        "text_encoder": 352_984_064,
        "vae": 83_653_863,
    },
    unet_channels=(320, 640, 1280, 1280),
    unet_layers_per_block=2,
    attention_levels=(True, True, True, False),
    ff_inner_mult=4,
    temporal_in_width=512,
    vae_decoder_top_channels=128,
    latent_downsample=8,
    workspace_factor=1.31,
    overhead_bytes=int(0.75 * GIB),
    default_decode_chunk=4,
    vae_tile_pixels=512 * 512,
    # Fitted to 41.9 / 176.2 / 157.5 / 428.1 TFLOP per step (docs/vram.md).
    flop_per_token=5.8036e8,
    flop_per_token_squared=1.4416e4,
    fixed_seconds=3.0,
)


def _dit_profile(name: str, *, params: dict[str, int], hidden: int, layers: int, ff_mult: float,
                 patch: tuple[int, int, int], downsample: int, temporal: int, cfg_batched: bool,
                 vae_top: int, tile: int, fixed_seconds: float, decode_chunk: int = 0,
                 embedded_guidance: bool = False) -> ModelProfile:
    """A diffusion-transformer family's profile. FLOP per step: 2 x denoiser params per token
    (the linear layers) + 4 x layers x hidden per token pair (QK^T and AV over all tokens)."""
    return ModelProfile(
        name=name, component_params=params, unet_channels=(hidden,), unet_layers_per_block=0,
        attention_levels=(True,), ff_inner_mult=int(round(ff_mult)), temporal_in_width=hidden,
        vae_decoder_top_channels=vae_top, latent_downsample=downsample, workspace_factor=1.31,
        overhead_bytes=int(0.75 * GIB), default_decode_chunk=decode_chunk, vae_tile_pixels=tile,
        flop_per_token=2.0 * params["transformer"], flop_per_token_squared=4.0 * layers * hidden,
        fixed_seconds=fixed_seconds, denoiser="transformer", architecture="dit", hidden_width=hidden,
        dit_layers=layers, patch=patch, temporal_downsample=temporal, cfg_batched=cfg_batched,
        embedded_guidance=embedded_guidance,
    )


# Parameter counts of the published models (counted on the meta device by each family's test).
WAN_PROFILE = _dit_profile(  # Wan-AI/Wan2.1-I2V-14B-480P-Diffusers
    "wan", params={"transformer": 16_394_878_784, "text_encoder": 5_680_910_336, "image_encoder": 630_766_080,
                   "vae": 126_892_531},
    hidden=5120, layers=40, ff_mult=2.7, patch=(1, 2, 2), downsample=8, temporal=4, cfg_batched=False,
    vae_top=96, tile=256 * 256, fixed_seconds=6.0,
)
LTX_VIDEO_PROFILE = _dit_profile(  # Lightricks/LTX-Video (0.9.x, 2B; counted by tests/integration/test_family_ltx.py)
    "ltx-video", params={"transformer": 1_923_385_472, "text_encoder": 4_762_310_656, "vae": 419_193_649},
    hidden=2048, layers=28, ff_mult=4, patch=(1, 1, 1), downsample=32, temporal=8, cfg_batched=True,
    vae_top=128, tile=512 * 512, fixed_seconds=3.0,
)
COGVIDEOX_PROFILE = _dit_profile(  # THUDM/CogVideoX-5b-I2V
    # Counted on the meta device (farm.models.families.cogvideox): the transformer's 5,570,479,680
    # parameters plus its learned positional embedding (54,607,872 values, a persistent buffer the
    # checkpoint stores and the GPU holds); the t5-v1_1-xxl encoder; the causal 3D VAE.
    "cogvideox", params={"transformer": 5_625_087_552, "text_encoder": 4_762_310_656, "vae": 215_583_907},
    hidden=3072, layers=42, ff_mult=4, patch=(1, 2, 2), downsample=8, temporal=4, cfg_batched=True,
    vae_top=128, tile=256 * 256, fixed_seconds=6.0,
)
HUNYUAN_VIDEO_PROFILE = _dit_profile(  # hunyuanvideo-community/HunyuanVideo-I2V
    "hunyuan-video", params={"transformer": 12_821_012_544, "text_encoder": 8_355_272_704,
                             "text_encoder_2": 123_060_480, "vae": 246_478_803},
    hidden=3072, layers=60, ff_mult=4, patch=(1, 2, 2), downsample=8, temporal=4, cfg_batched=True,
    vae_top=128, tile=256 * 256, fixed_seconds=8.0, embedded_guidance=True,
)
SVD_PROFILE = ModelProfile(  # stabilityai/stable-video-diffusion-img2vid-xt
    name="svd",
    component_params={"unet": 1_524_623_082, "image_encoder": 632_076_800, "vae": 97_742_847},
    unet_channels=(320, 640, 1280, 1280), unet_layers_per_block=2, attention_levels=(True, True, True, False),
    ff_inner_mult=4, temporal_in_width=320, vae_decoder_top_channels=128, latent_downsample=8,
    workspace_factor=1.31, overhead_bytes=int(0.75 * GIB), default_decode_chunk=8, vae_tile_pixels=512 * 512,
    flop_per_token=5.8036e8, flop_per_token_squared=1.4416e4, fixed_seconds=3.0,
)

PROFILES = {p.name: p for p in (I2VGENXL_PROFILE, WAN_PROFILE, LTX_VIDEO_PROFILE, COGVIDEOX_PROFILE,
                                 HUNYUAN_VIDEO_PROFILE, SVD_PROFILE)}


def latent_frames(profile: ModelProfile, frames: int) -> int:
    """Latent frames of a clip: a temporal VAE keeps the first frame and packs the rest
    (4k+1 frames -> k+1 latent frames); a per-frame VAE keeps every frame."""
    t = profile.temporal_downsample
    return frames if t == 1 else (frames - 1) // t + 1


def dit_tokens(profile: ModelProfile, width: int, height: int, frames: int) -> int:
    """Transformer tokens of one pass: latent frames x latent patches per frame."""
    pt, ph, pw = profile.patch
    down = profile.latent_downsample
    return -(-latent_frames(profile, frames) // pt) * (height // down // ph) * (width // down // pw)


def profile_for_model(model: str, gpu_name: str | None = None, calibration: str | None = None) -> ModelProfile:
    """The profile of a model reference's family (`farm.core.families.known_family`: `tiny`,
    `tiny:wan`, known Hub ids) or a family's name (what validation recorded for an item);
    I2VGen-XL for references whose family only the weights tell.

    A tiny model deliberately plans with the real model's profile: it stands in for the real
    weights, so plans, tiers and simulated OOMs behave as they would on real GPUs.

    With a `calibration` file (FARM_VRAM_CALIBRATION), the constants come from it: the entry
    of `gpu_name` (a CUDA device name, e.g. "NVIDIA H200") when it has one, else the largest
    of every measured GPU's constants (what the planner uses: it does not know the GPU kind).
    """
    from farm.core.families import known_family

    if model in PROFILES:  # a family's name (what validation recorded for an item)
        return calibrated(PROFILES[model], gpu_name, calibration)
    family = known_family(model) if model else None
    profile = PROFILES[family.name] if family is not None else I2VGENXL_PROFILE
    return calibrated(profile, gpu_name, calibration)


def calibrated(profile: ModelProfile, gpu_name: str | None, calibration: str | None) -> ModelProfile:
    if not calibration:
        return profile
    from farm.models.calibration_file import load_calibration

    return load_calibration(calibration).profile_for(profile, gpu_name, label=calibration)


@dataclass(frozen=True)
class VramEstimate:
    """Estimated peak allocated bytes of one render, and its parts."""

    total_bytes: int
    weights_bytes: int
    denoise_bytes: int
    decode_bytes: int
    overhead_bytes: int
    savers: tuple[str, ...] = field(default=())

    @property
    def total_gib(self) -> float:
        return self.total_bytes / GIB

    @property
    def peak_phase(self) -> str:
        return "denoise" if self.denoise_bytes >= self.decode_bytes else "decode"

    def phase_peak_bytes(self, phase: str) -> int:
        """The estimated peak of one phase ("denoise" or "decode") with the overhead: what that
        phase's `max_memory_allocated` measures."""
        return self.overhead_bytes + (self.denoise_bytes if phase == "denoise" else self.decode_bytes)

    def to_dict(self) -> dict:
        return {
            "total_gib": round(self.total_gib, 2),
            "weights_gib": round(self.weights_bytes / GIB, 2),
            "denoise_gib": round(self.denoise_bytes / GIB, 2),
            "decode_gib": round(self.decode_bytes / GIB, 2),
            "peak_phase": self.peak_phase,
            "savers": list(self.savers),
        }


def activation_elements_per_token(profile: ModelProfile, savers: frozenset[str] | tuple = ()) -> float:
    """Elements alive per latent token (at full latent resolution) at the UNet's worst moment.

    Skip connections of every level, plus the largest working set at full latent resolution:
    a ResNet (about 4C), a transformer's attention (outer residual + its input, norm, q, k, v,
    output: 6 widths; SDPA keeps no T x T scores) or its GEGLU feed-forward (input, norm, an 8x
    projection, a 4x gate and a 4x product: 18 widths). At the UNet's input sits a temporal
    transformer wider than the first level (512 vs 320 for I2VGen-XL): its feed-forward is the
    peak. Feed-forward chunking leaves a chunk's output instead of the 16 wide widths.
    """
    channels = profile.unet_channels
    per_level = profile.unet_layers_per_block + 1  # each layer's output plus the downsampler's
    skips = sum(per_level * c / 4**level for level, c in enumerate(channels))
    top = channels[0]
    chunked = FF_CHUNKING in savers
    mult = profile.ff_inner_mult

    def transformer(width: float, outer: float) -> float:
        attention = outer + 6 * width
        feed_forward = outer + (3 * width if chunked else (2 + 4 * mult) * width)
        return max(attention, feed_forward)

    working = [4 * top, transformer(profile.temporal_in_width, top)]
    if profile.attention_levels[0]:
        working.append(transformer(top, 0))
    return skips + max(working)


@dataclass(frozen=True)
class PhaseTerms:
    """The parts of one render's estimate that do not depend on the fitted constants:

        denoise = weights_denoise + workspace_factor x activation_elements x dtype_bytes
        decode  = weights_decode + decode workspace factor x vae_elements x dtype_bytes + video_bytes
    """

    weights_denoise: int
    weights_decode: int
    activation_elements: float
    vae_elements: float
    video_bytes: int
    dtype_bytes: int


def phase_terms(
    profile: ModelProfile,
    width: int,
    height: int,
    frames: int,
    *,
    dtype_bytes: int = 2,
    savers: tuple[str, ...] | frozenset[str] = (),
    guidance: bool = True,
) -> PhaseTerms:
    savers = frozenset(savers)
    width_px, height_px = width, height
    down = profile.latent_downsample
    tokens_per_frame = (height // down) * (width // down)
    batch = 2 if guidance and not profile.embedded_guidance else 1
    params = profile.component_params
    if GROUP_OFFLOAD in savers:
        # Every component but the VAE streams to the GPU layer by layer: the VAE and about two
        # of the denoiser's layers are resident.
        denoiser = params[profile.denoiser]
        layer_bytes = denoiser * (1 if FP8_LAYERWISE in savers else dtype_bytes) // max(profile.dit_layers or 16, 1)
        weights_decode = params["vae"] * dtype_bytes
        weights_denoise = weights_decode + 2 * layer_bytes
    elif CPU_OFFLOAD in savers:  # only the component at work is on the GPU
        weights_denoise = params[profile.denoiser] * dtype_bytes
        weights_decode = params["vae"] * dtype_bytes
    else:
        weights_denoise = weights_decode = profile.total_params * dtype_bytes
        if FP8_LAYERWISE in savers:  # the denoiser's weights at one byte each
            weights_denoise = weights_decode = weights_denoise - params[profile.denoiser] * (dtype_bytes - 1)
    if profile.architecture == "dit":
        # The residual stream plus the widest working set of one block: attention (norm, q, k,
        # v, output) or the feed-forward (its inner width twice: projection and activation).
        # Guidance passes run one at a time unless the family batches them.
        width = profile.hidden_width
        per_token = 2 * width + max(6 * width, (2 + 2 * profile.ff_inner_mult) * width)
        passes = batch if profile.cfg_batched else 1
        if FF_CHUNKING in savers:
            per_token = 2 * width + 6 * width
        activations = per_token * passes * dit_tokens(profile, width=width_px, height=height_px, frames=frames)
    else:
        activations = activation_elements_per_token(profile, savers) * batch * frames * tokens_per_frame
    # A decode chunk of 0: the family's VAE decodes the whole clip at once.
    chunk = 1 if VAE_SLICING in savers else min(profile.default_decode_chunk or frames, frames)
    pixels = width * height
    if VAE_TILING in savers:
        pixels = min(pixels, profile.vae_tile_pixels)
    vae_elements = 5 * profile.vae_decoder_top_channels * pixels * chunk  # ResNet working set at full size
    video = frames * 3 * width * height * 4  # the decoded frames, kept in fp32
    return PhaseTerms(weights_denoise, weights_decode, activations, vae_elements, video, dtype_bytes)


def estimate_vram(
    profile: ModelProfile,
    width: int,
    height: int,
    frames: int,
    *,
    dtype_bytes: int = 2,
    savers: tuple[str, ...] | frozenset[str] = (),
    guidance: bool = True,
) -> VramEstimate:
    """Peak allocated GPU memory of one render (bytes)."""
    savers = frozenset(savers)
    terms = phase_terms(profile, width, height, frames, dtype_bytes=dtype_bytes, savers=savers, guidance=guidance)
    denoise = terms.weights_denoise + profile.workspace_factor * terms.activation_elements * dtype_bytes
    decode = terms.weights_decode + profile.decode_factor * terms.vae_elements * dtype_bytes + terms.video_bytes
    total = profile.overhead_bytes + max(denoise, decode)
    return VramEstimate(
        total_bytes=int(total),
        weights_bytes=int(terms.weights_denoise),
        denoise_bytes=int(denoise),
        decode_bytes=int(decode),
        overhead_bytes=profile.overhead_bytes,
        savers=tuple(s for s in SAVERS if s in savers),
    )


def unet_flop_per_step(profile: ModelProfile, width: int, height: int, frames: int, *, guidance: bool = True) -> float:
    """UNet FLOP per denoising step (both guidance halves when guidance is on)."""
    if profile.architecture == "dit":
        tokens = dit_tokens(profile, width, height, frames)
        flop = 2 * (profile.flop_per_token * tokens + profile.flop_per_token_squared * tokens * tokens)
        return flop if guidance and not profile.embedded_guidance else flop / 2
    down = profile.latent_downsample
    tokens = (height // down) * (width // down)
    flop = frames * (profile.flop_per_token * tokens + profile.flop_per_token_squared * tokens * tokens)
    return flop if guidance else flop / 2


def render_flop(profile: ModelProfile, width: int, height: int, frames: int, steps: int, *, guidance: bool = True) -> float:
    return steps * unet_flop_per_step(profile, width, height, frames, guidance=guidance)
