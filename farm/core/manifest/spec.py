"""The manifest's types: what a user writes (`ItemSpec`, `ManifestHeader`), what validation makes
of it (`JobItem`, `RejectedItem`, `JobSpec`), the caller's job-level settings (`JobOverrides`),
the format's constants and the help text that error messages quote.

`JobSpec.to_dict` and `JobSpec.from_dict` are the job's `spec.json` form (what `farm resume`
runs again); version 1 of that form stored local image paths as written, version 2 canonical.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, StrictInt, StrictStr

from farm.core.deliverables import FIELD_HELP as DELIVERABLE_HELP
from farm.core.deliverables import PRESETS as DELIVERABLE_PRESETS
from farm.core.deliverables import Deliverable, DeliverableList
from farm.core.errors import ManifestIssue
from farm.core.ids import derive_seed
from farm.core.ladder import DEFAULT_ORDER
from farm.core.localfiles import canonical_path
from farm.core.manifest.images import _is_remote
from farm.core.params import FIELD_HELP, PARAM_FIELDS, ParamOverrides, RenderParams, Seed

MANIFEST_VERSION = 1
SPEC_VERSION = 2  # spec.json: 2 since local image paths are stored canonical
PROMPT_MAX_CHARS = 2000
DEFAULT_MODEL = "ali-vilab/i2vgen-xl"
DEFAULT_OUTPUT = "./farm-output"
MAX_TAKES = 16

ITEM_HELP = {
    "id": "a name for the item's outputs (letters, digits, '.', '_', '-'); optional",
    "image": "a JPEG, PNG or WEBP image: a path (relative to the manifest's folder, or absolute), "
    "s3://BUCKET/KEY, or an https:// URL on a host the operator allows",
    "prompt": f"a text of 1 to {PROMPT_MAX_CHARS} characters describing the motion",
    "version": f"the number {MANIFEST_VERSION}",
    "name": "the job's name, used as the output folder",
    "model": "a Hugging Face id, a local diffusers folder, `tiny` or `tiny:FAMILY` (`farm models` lists them); "
    "on an item, that item's model",
    "output": "where results go: a local folder (relative to the manifest) or s3://BUCKET/PREFIX",
    "defaults": "a mapping of parameters applied to every item",
    "items": "a list of items, each with at least `image` and `prompt`",
    "degrade_order": "a list ordering memory_savers, bigger_tier, resolution, frames (each at most once)",
    "unfit": "degrade (plan cheaper settings on the largest GPU) or reject (fail the item at plan time)",
    "priority": "an integer from -100 to 100; higher runs first (default 0)",
    "notify_url": "an https:// URL called once when the job ends (on a host the operator allows)",
    "deliverables": "a list of deliverables made from each render on CPU workers: built-in names ("
    + ", ".join(DELIVERABLE_PRESETS) + ") or mappings with `name`, an optional `preset` and the fields "
    + ", ".join(DELIVERABLE_HELP) + " (docs/deliverables.md)",
    "takes": f"an integer from 1 to {MAX_TAKES}: how many variants (distinct seeds) to render of the item",
    "seeds": f"a list of 1 to {MAX_TAKES} distinct seeds, one take per seed",
    "deliverables_for": "all (every item's deliverables) or picked (only takes chosen with `farm pick`)",
    **FIELD_HELP,
}


def _distinct(seeds: list[int]) -> list[int]:
    repeated = sorted({seed for seed in seeds if seeds.count(seed) > 1})
    if repeated:
        raise ValueError(f"seeds must differ (repeated: {', '.join(map(str, repeated))}); a repeated seed renders the same take twice")
    return seeds


def _split_names(value):
    """A CSV cell or a flag: "vertical web" or "vertical,web" is a list of deliverable names."""
    if isinstance(value, str):
        return [part for part in re.split(r"[\s;,]+", value) if part]
    return value


Takes = Annotated[StrictInt, Field(ge=1, le=MAX_TAKES)]
Seeds = Annotated[list[Seed], Field(min_length=1, max_length=MAX_TAKES), AfterValidator(_distinct)]
Deliverables = Annotated[DeliverableList, BeforeValidator(_split_names)]


class ItemDefaults(ParamOverrides):
    """A manifest's `defaults`: parameters, plus the deliverables and takes of every item."""

    deliverables: Deliverables | None = None
    takes: Takes | None = None


class ItemSpec(ParamOverrides):
    """One image to animate, as the user wrote it."""

    id: StrictStr | None = Field(default=None, min_length=1, max_length=256)
    image: StrictStr = Field(min_length=1, max_length=4096)
    prompt: StrictStr = Field(min_length=1, max_length=PROMPT_MAX_CHARS)
    model: StrictStr | None = Field(default=None, min_length=1, max_length=4096)
    deliverables: Deliverables | None = None
    takes: Takes | None = None
    seeds: Seeds | None = None


class ManifestHeader(BaseModel):
    """Job-level fields of a YAML/JSON manifest (items are validated one by one)."""

    model_config = ConfigDict(extra="forbid")

    version: Literal[1]
    name: StrictStr | None = Field(default=None, min_length=1, max_length=200)
    model: StrictStr | None = Field(default=None, min_length=1, max_length=4096)
    output: StrictStr | None = Field(default=None, min_length=1, max_length=4096)
    defaults: ItemDefaults = ItemDefaults()
    deliverables_for: Literal["all", "picked"] | None = None
    degrade_order: list[Literal["memory_savers", "bigger_tier", "resolution", "frames"]] | None = Field(
        default=None, min_length=1, max_length=4
    )
    unfit: Literal["degrade", "reject"] | None = None
    priority: StrictInt | None = Field(default=None, ge=-100, le=100)
    notify_url: StrictStr | None = Field(default=None, min_length=8, max_length=2048)
    items: list[Any] = Field(min_length=1)


ITEM_FIELDS = ("id", "image", "prompt", "model", "preset", *PARAM_FIELDS, "deliverables", "takes", "seeds")
DEFAULTS_FIELDS = ("preset", *PARAM_FIELDS, "deliverables", "takes")
HEADER_FIELDS = tuple(ManifestHeader.model_fields)


@dataclass(frozen=True)
class JobItem:
    """One validated item, ready to render: safe id, resolved image location and parameters."""

    index: int
    id: str
    image: str
    prompt: str
    params: RenderParams
    requested: dict[str, Any]
    line: int | None = None
    given_id: str | None = None
    model: str | None = None  # this item's model when it names one; None: the job's
    family: str | None = None  # the model's family where validation could tell (farm.core.families)
    deliverables: tuple[Deliverable, ...] = ()  # made from the committed render, off the GPU
    take: int | None = None  # K of `ITEM.take-K`: one of several variants of one image
    take_of: str | None = None  # the id the takes share (ITEM)

    @property
    def seed(self) -> int:
        return self.params.seed if self.params.seed is not None else derive_seed(self.id)


@dataclass(frozen=True)
class RejectedItem:
    """An item that failed validation (kept only with `skip_invalid`)."""

    index: int
    id: str | None
    issues: list[ManifestIssue]

    @property
    def message(self) -> str:
        return "; ".join(f"{i.field or 'item'}: {i.message}" for i in self.issues)


@dataclass
class JobSpec:
    """A validated job: what to render, with which model, and where the results go."""

    name: str
    model: str
    output: str
    items: list[JobItem]
    rejected: list[RejectedItem] = field(default_factory=list)
    source: str | None = None
    format: str | None = None
    degrade_order: tuple[str, ...] = DEFAULT_ORDER
    unfit: str = "degrade"
    priority: int = 0
    notify_url: str | None = None
    image_root: str | None = None  # local images must stay inside this folder (the API's); None: anywhere
    deliverables_for: str = "all"  # or "picked": only the takes `farm pick` chose

    @property
    def total(self) -> int:
        return len(self.items) + len(self.rejected)

    def model_of(self, item: JobItem) -> str:
        """The model that renders `item`: its own, else the job's."""
        return item.model or self.model

    def profile_key(self, item: JobItem) -> str:
        """What `profile_for_model` plans `item` with: its family where validation knew it,
        else its model reference."""
        return item.family or self.model_of(item)

    def to_dict(self) -> dict[str, Any]:
        """The validated job as stored in `spec.json` (what `farm resume` runs again)."""
        return {
            "spec_version": SPEC_VERSION,
            "name": self.name,
            "model": self.model,
            "output": self.output,
            "source": self.source,
            "format": self.format,
            "degrade_order": list(self.degrade_order),
            "unfit": self.unfit,
            "priority": self.priority,
            "notify_url": self.notify_url,
            "image_root": self.image_root,
            "deliverables_for": self.deliverables_for,
            "items": [
                {
                    "index": item.index,
                    "id": item.id,
                    "image": item.image,
                    "prompt": item.prompt,
                    "params": item.params.model_dump(),
                    "requested": item.requested,
                    "line": item.line,
                    "given_id": item.given_id,
                    **({"model": item.model} if item.model else {}),
                    **({"family": item.family} if item.family else {}),
                    **({"deliverables": [d.to_dict() for d in item.deliverables]} if item.deliverables else {}),
                    **({"take": item.take, "take_of": item.take_of} if item.take is not None else {}),
                }
                for item in self.items
            ],
            "rejected": [
                {"index": r.index, "id": r.id, "issues": [i.to_dict() for i in r.issues]} for r in self.rejected
            ],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, output: str | None = None) -> JobSpec:
        shared: dict[str, RenderParams] = {}  # items with equal parameters share one object

        def params(values: dict) -> RenderParams:
            key = json.dumps(values, sort_keys=True)
            if key not in shared:
                shared[key] = RenderParams.model_validate(values)
            return shared[key]

        # Version 1 stored local image paths as written; read them canonical, as validation now
        # does, since the worker opens them without following links.
        legacy = data.get("spec_version", 1) < 2

        def image(location: str) -> str:
            return canonical_path(location) if legacy and not _is_remote(location) else location

        shared_deliverables: dict[str, tuple[Deliverable, ...]] = {}

        def deliverables(values: list | None) -> tuple[Deliverable, ...]:
            if not values:
                return ()
            key = json.dumps(values, sort_keys=True)
            if key not in shared_deliverables:
                shared_deliverables[key] = tuple(Deliverable.from_dict(v) for v in values)
            return shared_deliverables[key]

        items = [
            JobItem(
                index=entry["index"],
                id=entry["id"],
                image=image(entry["image"]),
                prompt=entry["prompt"],
                params=params(entry["params"]),
                requested=entry["requested"],
                line=entry.get("line"),
                given_id=entry.get("given_id"),
                model=entry.get("model"),
                family=entry.get("family"),
                deliverables=deliverables(entry.get("deliverables")),
                take=entry.get("take"),
                take_of=entry.get("take_of"),
            )
            for entry in data["items"]
        ]
        rejected = [
            RejectedItem(
                r["index"],
                r["id"],
                [
                    ManifestIssue(
                        i["message"], field=i["field"], item_index=i["item_index"], item_id=i["item_id"],
                        value=i.get("value"), line=i["line"],
                    )
                    for i in r["issues"]
                ],
            )
            for r in data.get("rejected", [])
        ]
        return cls(
            name=data["name"],
            model=data["model"],
            output=output or data["output"],
            items=items,
            rejected=rejected,
            source=data.get("source"),
            format=data.get("format"),
            degrade_order=tuple(data.get("degrade_order") or DEFAULT_ORDER),
            unfit=data.get("unfit", "degrade"),
            priority=data.get("priority", 0),
            notify_url=data.get("notify_url"),
            image_root=data.get("image_root"),
            deliverables_for=data.get("deliverables_for", "all"),
        )


@dataclass(frozen=True)
class JobOverrides:
    """Job-level settings from the caller (CLI flags); they win over the manifest's own."""

    name: str | None = None
    model: str | None = None
    output: str | None = None
    params: ParamOverrides = ParamOverrides()
    degrade_order: tuple[str, ...] | None = None
    unfit: str | None = None
    deliverables: tuple[Deliverable, ...] | None = None  # `--deliverable`: every item's, over the manifest's
    takes: int | None = None
