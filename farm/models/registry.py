"""Which adapter renders a model: the family from the reference or the weights, then its class.

`family_of_weights` reads `model_index.json`'s `_class_name` (what `save_pretrained` writes for
every diffusers pipeline), so a local folder or a downloaded Hub id of any supported family just
works; `tiny:FAMILY` and the Hub ids in `farm.core.families` are known without reading anything.
Adapters and tiny builders are imported only when used (each pulls in its diffusers pipeline).
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path

from farm.core.errors import ModelUnavailableError
from farm.core.families import FAMILIES, FamilyRules, UnknownFamilyError, family_for_pipeline_class, known_family

# family -> "module:attribute" of its adapter class and of its tiny model builder
ADAPTERS = {
    "i2vgen-xl": "farm.models.i2vgen:I2VGenXLAdapter",
    "wan": "farm.models.families.wan:WanAdapter",
    "ltx-video": "farm.models.families.ltx:LTXVideoAdapter",
    "cogvideox": "farm.models.families.cogvideox:CogVideoXAdapter",
    "svd": "farm.models.families.svd:SVDAdapter",
    "hunyuan-video": "farm.models.families.hunyuan:HunyuanVideoAdapter",
}
TINY_BUILDERS = {
    "i2vgen-xl": "farm.models.tiny:ensure_tiny_model",
    "wan": "farm.models.families.wan:ensure_tiny_model",
    "ltx-video": "farm.models.families.ltx:ensure_tiny_model",
    "cogvideox": "farm.models.families.cogvideox:ensure_tiny_model",
    "svd": "farm.models.families.svd:ensure_tiny_model",
    "hunyuan-video": "farm.models.families.hunyuan:ensure_tiny_model",
}


def _attribute(path: str):
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


def family_of_weights(folder: Path, *, ref: str = "") -> FamilyRules:
    """The family of a diffusers folder, from its `model_index.json`."""
    index = Path(folder) / "model_index.json"
    try:
        class_name = json.loads(index.read_text()).get("_class_name")
    except (OSError, ValueError) as exc:
        raise ModelUnavailableError(f"model {ref or folder!r}: cannot read {index} ({exc})") from None
    if not isinstance(class_name, str):
        raise ModelUnavailableError(f"model {ref or folder!r}: {index} names no `_class_name`")
    try:
        return family_for_pipeline_class(class_name, ref=ref)
    except UnknownFamilyError as exc:
        raise ModelUnavailableError(str(exc)) from None


def family_of_ref(ref: str, *, read_local: bool = True) -> FamilyRules | None:
    """The family of a model reference without downloading: known references, and (with
    `read_local`) local folders read from disk. None: a Hub id only its weights can tell."""
    try:
        family = known_family(ref)
    except UnknownFamilyError as exc:
        raise ModelUnavailableError(str(exc)) from None
    if family is not None or not read_local:
        return family
    local = Path(ref.strip()).expanduser()
    if local.is_dir() and (local / "model_index.json").is_file():
        return family_of_weights(local, ref=ref)
    return None


def adapter_class(family: str):
    if family not in ADAPTERS:
        raise ModelUnavailableError(f"no adapter for family {family!r}; supported: {', '.join(FAMILIES)}")
    return _attribute(ADAPTERS[family])


def ensure_tiny(ref: str, cache_dir: Path) -> Path:
    """Build (once) the tiny random-weight model `ref` names (`tiny` or `tiny:FAMILY`)."""
    family = family_of_ref(ref, read_local=False)
    if family is None or ref.strip() != family.tiny:
        raise ModelUnavailableError(f"{ref!r} is not a tiny model farm builds")
    return Path(_attribute(TINY_BUILDERS[family.name])(cache_dir))


def load_adapter(ref: str, **options):
    """Load `ref` with its family's adapter (options as for `VideoAdapter.load`)."""
    from farm.models.loading import resolve_model

    family = family_of_ref(ref)
    if family is None:  # a Hub id farm has not seen: download it, then ask the weights
        family = family_of_weights(resolve_model(ref).path, ref=ref)
    return adapter_class(family.name).load(ref, **options)
