"""Where a model's weights come from: `tiny`, `random:ID`, a local diffusers folder, or a Hugging Face id.

Every source ends as a local folder in diffusers format that `from_pretrained` loads, so the
tiny model (and the full-size random one, for hardware checks) takes exactly the path real
weights take. A real model that cannot be found or downloaded raises `ModelUnavailableError`
saying how to provide the weights.

Weight files come in variants: a Hub repo such as `ali-vilab/i2vgen-xl` ships
`*.fp16.safetensors` beside (or instead of) the full-precision files, and a download asked for
the fp16 variant holds only those. `weight_variant` looks at what the folder holds, so the
loader asks `from_pretrained` for exactly that: the half-size files for a half-precision run
when they exist, the plain files otherwise (and the variant files when nothing else is there).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from farm.core.errors import ModelUnavailableError

TINY = "tiny"
RANDOM_PREFIX = "random:"
DEFAULT_MODEL = "ali-vilab/i2vgen-xl"
HALF_VARIANT = "fp16"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".safetensors.index.json", ".bin.index.json")


def cache_dir() -> Path:
    """Farm's own cache (the tiny model lives here): FARM_CACHE_DIR, else ~/.cache/farm."""
    configured = os.environ.get("FARM_CACHE_DIR")
    if configured:
        return Path(configured).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "farm"


@dataclass(frozen=True)
class ResolvedModel:
    """A model reference turned into a local folder."""

    ref: str
    source: str  # "tiny", "random", "local" or "hub"
    path: Path

    @property
    def config_sha256(self) -> str:
        return config_hash(self.path)


def absolute_model_ref(ref: str) -> str:
    """`ref` with a local folder made absolute (workers and the coordinator do not run in the
    user's folder); `tiny` and Hugging Face ids unchanged."""
    local = Path(ref.strip()).expanduser()
    return str(local.resolve()) if not is_tiny(ref) and local.is_dir() else ref


def is_tiny(ref: str) -> bool:
    """`tiny` or `tiny:FAMILY`: a random-weight model farm builds in code."""
    ref = ref.strip()
    return ref == TINY or ref.startswith(TINY + ":")


def resolve_model(ref: str, *, variant: str | None = None, device: str = "cpu", dtype=None) -> ResolvedModel:
    """Find (building or downloading if needed) the local folder holding `ref`'s weights.

    `variant` is the weight variant worth downloading for a Hub id; `device` and `dtype` say
    where a `random:` model is built (directly there, in that dtype).
    """
    ref = ref.strip()
    if ref == TINY or ref.startswith(TINY + ":"):
        from farm.models.registry import ensure_tiny

        return ResolvedModel(ref, "tiny", ensure_tiny(ref, cache_dir()))
    if ref.startswith(RANDOM_PREFIX):
        import torch

        from farm.models.fullsize import ensure_random_model

        folder = ensure_random_model(
            cache_dir(), ref[len(RANDOM_PREFIX):], device=device, dtype=dtype or torch.float16
        )
        return ResolvedModel(ref, "random", folder)
    local = Path(ref).expanduser()
    if local.is_dir():
        if not (local / "model_index.json").is_file():
            raise ModelUnavailableError(
                f"model folder {local} has no model_index.json, so it is not a diffusers pipeline; "
                "point --model at the folder that `save_pretrained` or `hf download` produced"
            )
        return ResolvedModel(ref, "local", local.resolve())
    if ref.startswith((".", "/", "~")) or ref.count("/") != 1:
        raise ModelUnavailableError(
            f"model {ref!r} is neither an existing folder nor a Hugging Face id (owner/name); "
            f"use `tiny`, a local diffusers folder, or an id such as {DEFAULT_MODEL}"
        )
    return ResolvedModel(ref, "hub", _download(ref, variant))


def hub_offline() -> bool:
    """Whether the Hugging Face Hub is in offline mode, as huggingface_hub itself decides:
    HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) parsed by the Hub's own rule (1/ON/YES/TRUE in any
    case), both as the Hub read it at import (it refuses every request then) and as the
    environment says now (a worker may have been handed the setting after the Hub was imported)."""
    from huggingface_hub import constants

    def is_true(value: str | None) -> bool:
        parse = getattr(constants, "_is_true", None)
        if parse is not None:
            return bool(parse(value))
        return value is not None and value.upper() in constants.ENV_VARS_TRUE_VALUES

    now = is_true(os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE"))
    return bool(constants.HF_HUB_OFFLINE) or now


def _download(repo_id: str, variant: str | None) -> Path:
    from diffusers import DiffusionPipeline

    offline = hub_offline()
    attempts = [variant, None] if variant else [None]
    last_error: Exception | None = None
    for attempt in attempts:
        try:
            folder = DiffusionPipeline.download(repo_id, variant=attempt, local_files_only=offline)
            return Path(folder)
        except Exception as exc:  # huggingface_hub and requests raise a wide variety here
            last_error = exc
    raise ModelUnavailableError(_unavailable_message(repo_id, last_error, offline)) from None


def _unavailable_message(repo_id: str, error: Exception | None, offline: bool) -> str:
    cause = str(error).strip().splitlines()[0] if error else "unknown error"
    hf_home = os.environ.get("HF_HOME", "~/.cache/huggingface")
    mode = "HF_HUB_OFFLINE is set" if offline else "the Hugging Face Hub could not be reached"
    return (
        f"model {repo_id!r} is not in the local cache ({hf_home}) and {mode} ({cause}). "
        "Provide the weights in one of these ways: "
        f"(1) on a machine with internet run `hf download {repo_id} --local-dir DIR` (the `hf` command comes "
        "with huggingface_hub), copy DIR here "
        "and pass `--model DIR` (or set FARM_MODEL=DIR); "
        "(2) copy a Hugging Face cache that holds the model and set HF_HOME to it, with HF_HUB_OFFLINE=1; "
        "(3) to try the farm without weights, use `--model tiny` (random weights, noise-like videos)."
    )


def _weight_files(component: Path) -> list[str]:
    return [p.name for p in component.iterdir() if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES)]


def _is_variant_file(name: str, variant: str) -> bool:
    return f".{variant}." in name


def weight_variant(folder: Path, *, prefer_half: bool, variant: str = HALF_VARIANT) -> str | None:
    """The `variant=` to pass to `from_pretrained` for what `folder` holds.

    With `prefer_half`, the variant whenever any component has variant files (diffusers falls
    back to the plain files for components without them). Without it, the plain files, unless
    some component has only variant files (a download made with `variant="fp16"`).
    """
    has_variant = only_variant = False
    for component in sorted(p for p in folder.iterdir() if p.is_dir()):
        names = _weight_files(component)
        variants = [n for n in names if _is_variant_file(n, variant)]
        has_variant = has_variant or bool(variants)
        only_variant = only_variant or (bool(variants) and len(variants) == len(names))
    if has_variant and (prefer_half or only_variant):
        return variant
    return None


def config_hash(folder: Path) -> str:
    """sha256 over the pipeline's config files (model_index.json and each component's config)."""
    digest = hashlib.sha256()
    candidates = [folder / "model_index.json"] + sorted(folder.glob("*/*config*.json"))
    for path in candidates:
        if path.is_file():
            digest.update(path.relative_to(folder).as_posix().encode())
            digest.update(b"\0")
            digest.update(path.read_bytes())
            digest.update(b"\0")
    return digest.hexdigest()


def select_device(forced: str | None = None) -> str:
    """`forced` (FARM_DEVICE) when set, else CUDA when available, else the CPU."""
    import torch

    if forced:
        return forced
    return "cuda" if torch.cuda.is_available() else "cpu"
