"""Where a model's weights come from: `tiny`, a local diffusers folder, or a Hugging Face id.

Every source ends as a local folder in diffusers format that `from_pretrained` loads, so the
tiny model takes exactly the path real weights take. A real model that cannot be found or
downloaded raises `ModelUnavailableError` saying how to provide the weights.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from farm.core.errors import ModelUnavailableError

TINY = "tiny"
DEFAULT_MODEL = "ali-vilab/i2vgen-xl"


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
    source: str  # "tiny", "local" or "hub"
    path: Path

    @property
    def config_sha256(self) -> str:
        return config_hash(self.path)


def absolute_model_ref(ref: str) -> str:
    """`ref` with a local folder made absolute (workers and the coordinator do not run in the
    user's folder); `tiny` and Hugging Face ids unchanged."""
    local = Path(ref.strip()).expanduser()
    return str(local.resolve()) if ref.strip() != TINY and local.is_dir() else ref


def resolve_model(ref: str, *, variant: str | None = None) -> ResolvedModel:
    """Find (building or downloading if needed) the local folder holding `ref`'s weights."""
    ref = ref.strip()
    if ref == TINY:
        from farm.models.tiny import ensure_tiny_model

        return ResolvedModel(ref, "tiny", ensure_tiny_model(cache_dir()))
    local = Path(ref).expanduser()
    if local.is_dir():
        if not (local / "model_index.json").is_file():
            raise ModelUnavailableError(
                f"model folder {local} has no model_index.json, so it is not a diffusers pipeline; "
                "point --model at the folder that `save_pretrained` or `huggingface-cli download` produced"
            )
        return ResolvedModel(ref, "local", local.resolve())
    if ref.startswith((".", "/", "~")) or ref.count("/") != 1:
        raise ModelUnavailableError(
            f"model {ref!r} is neither an existing folder nor a Hugging Face id (owner/name); "
            f"use `tiny`, a local diffusers folder, or an id such as {DEFAULT_MODEL}"
        )
    return ResolvedModel(ref, "hub", _download(ref, variant))


def _download(repo_id: str, variant: str | None) -> Path:
    from diffusers import DiffusionPipeline

    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")
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
        f"(1) on a machine with internet run `huggingface-cli download {repo_id} --local-dir DIR`, copy DIR here "
        "and pass `--model DIR` (or set FARM_MODEL=DIR); "
        "(2) copy a Hugging Face cache that holds the model and set HF_HOME to it, with HF_HUB_OFFLINE=1; "
        "(3) to try the farm without weights, use `--model tiny` (random weights, noise-like videos)."
    )


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


def select_device() -> str:
    import torch

    forced = os.environ.get("FARM_DEVICE")
    if forced:
        return forced
    return "cuda" if torch.cuda.is_available() else "cpu"


def quiet_libraries() -> None:
    """Silence progress bars and deprecation chatter of diffusers/transformers in workers."""
    import diffusers
    import transformers

    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
