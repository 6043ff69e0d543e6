"""The operator's configuration: every `FARM_*` setting, in one pydantic-settings model.

`load_settings()` reads the environment once, at an edge (the CLI, the Serve app, the coordinator
or a worker as it starts), and the parts are passed down as arguments: nothing below reads
`os.environ` for a farm setting. Each part keeps the variable prefix it always had, so
deployments keep working:

    FarmSettings           FARM_MODEL, FARM_DEFAULT_OUTPUT, FARM_TIERS_FILE, ...
      .engine              dispatch and local workers (FARM_CPU_WORKERS, FARM_STOP_GRACE_S, ...)
      .coordinator         the service's job coordinator (FARM_STATE_URI, FARM_MAX_QUEUED_JOBS, ...)
      .workers             render workers (FARM_DEVICE, FARM_PRECISION, FARM_GPU_VRAM_GB, ...)
      .api                 the HTTP API (FARM_API_*)
      .storage             S3-compatible storage (FARM_S3_*), farm.storage.config
      .url                 image URLs and webhooks (FARM_URL_*), farm.storage.config
      .client              the remote CLI (FARM_ENDPOINT, FARM_API_TOKEN)

A value that does not validate is a `SettingsError` naming the variable, the value and what
to set instead. `docs/configuration.md` is generated from these models
(`python -m farm.settings > docs/configuration.md`); a test fails when it is stale, or when
the code names a `FARM_*` variable that it does not list.
"""

from __future__ import annotations

import json
import os
from typing import Annotated, Any, Literal

from pydantic import AliasChoices, BaseModel, Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from farm.settings_base import FarmBaseSettings, given_values_only

from farm.core.errors import FarmError
from farm.storage.config import StorageConfig, UrlFetchConfig

DEFAULT_MODEL = "ali-vilab/i2vgen-xl"
DEFAULT_OUTPUT = "./farm-output"
DEFAULT_MAX_MANIFEST_BYTES = 64 * 1024 * 1024


def _config(prefix: str) -> SettingsConfigDict:
    return SettingsConfigDict(env_prefix=prefix, extra="ignore", protected_namespaces=(), populate_by_name=True)


class SettingsError(FarmError):
    """A setting's value is not valid (exit 2 from the CLI, as any other invalid input)."""


class EngineSettings(FarmBaseSettings):
    """Dispatch, and the render workers of a local run."""

    model_config = _config("FARM_")

    cpu_workers: int = Field(1, ge=1, le=64, description="CPU render workers when the cluster has no GPU.")
    cpu_threads: int | None = Field(
        None, ge=1, description="torch threads per CPU worker (default: every core of the node)."
    )
    worker_restart_timeout_s: float = Field(
        180.0, gt=0, description="How long a dead worker may take to come back (Ray restarts it, it reloads the model) "
        "before its items are planned on the workers that are left."
    )
    stop_grace_s: float = Field(
        30.0, ge=0, description="After a stop request (SIGTERM, Ctrl-C): how long running items may take to finish "
        "before they are handed back (a resumed job renders them)."
    )
    record_interval_s: float = Field(
        2.0, gt=0, description="How often a running job's record (JOB/job.json) is rewritten."
    )
    worker_idle_timeout_s: float = Field(
        300.0, ge=0, description="A render worker with nothing to do for this long stops and releases its GPU "
        "(so the autoscaler can remove the node); 0 = never."
    )
    min_workers_per_tier: dict[str, Annotated[int, Field(ge=0)]] = Field(
        default_factory=dict, description="Workers each tier keeps even when idle: `24g=1,80g=0` (or the JSON object "
        "{\"24g\": 1}); tiers not named keep none."
    )
    max_concurrent_loads: int = Field(
        4, ge=1, description="Render workers that load their model at the same time, at most (new GPUs that joined)."
    )
    cluster_poll_s: float = Field(
        2.0, gt=0, description="How often the farm looks at the cluster's GPUs to start workers on new ones and "
        "stop idle ones."
    )
    autoscale_max_workers: dict[str, Annotated[int, Field(ge=0)]] = Field(
        default_factory=dict, description="Ask Ray's autoscaler for GPU nodes while work waits: the most workers "
        "each tier may grow to, `12g=16,24g=8,80g=4` (or JSON); match the node groups' maxReplicas. Tiers not named "
        "are never requested; empty: nothing is requested (a fixed cluster)."
    )
    autoscale_wait_s: float = Field(
        600.0, gt=0, description="How long work waits for a requested tier's first node. Then the tier is reported "
        "unprovidable (status `unprovidable_tiers`, metric farm_tier_unprovidable) and its queue is planned on "
        "the tiers there are."
    )
    drain_check_s: float = Field(
        2.0, gt=0, description="While rendering, how often a worker asks whether its node is being drained (Ray's "
        "node drain, or a SIGTERM to the node); a draining node's worker takes no new item, and hands its current "
        "one back when it cannot finish before the node's deadline."
    )
    drain_margin_s: float = Field(
        5.0, ge=0, description="On a draining node: the time a render must have to spare before the node's deadline "
        "to be finished rather than handed back."
    )

    @field_validator("min_workers_per_tier", "autoscale_max_workers", mode="before")
    @classmethod
    def _tier_counts(cls, value: Any) -> Any:
        """`24g=1,80g=0` or a JSON object, from an environment variable."""
        if not isinstance(value, str):
            return value
        text = value.strip()
        if text.startswith("{"):
            return json.loads(text)
        pairs = [part.split("=", 1) for part in text.split(",") if part.strip()]
        if any(len(pair) != 2 for pair in pairs):
            raise ValueError("write TIER=COUNT pairs separated by commas, e.g. 24g=1,80g=0")
        return {tier.strip(): count.strip() for tier, count in pairs}


class CoordinatorSettings(FarmBaseSettings):
    """The job coordinator of `farm serve`."""

    model_config = _config("FARM_")

    state_uri: str = Field(
        os.path.join("~", ".cache", "farm", "state"),
        description="Where the job registry lives (a folder or s3://BUCKET/PREFIX); unfinished jobs resume from it "
        "after a restart.",
    )
    max_queued_jobs: int = Field(100, ge=1, description="Submitted jobs waiting to start, at most (then 429).")

    # --- job leases (farm.core.lease): one coordinator runs a job at a time -----------------
    job_lease_ttl_s: float = Field(
        60.0, ge=1.0, description="A coordinator runs a job only while it holds the job's lease in FARM_STATE_URI "
        "(leases/JOB_ID.json), renewed every TTL/3; one that cannot renew stops dispatching the job's items after "
        "5/6 of the TTL. Another coordinator (a RayService upgrade's new cluster) takes a job over once its lease "
        "has not changed for a whole TTL: between 2/3 and 4/3 of the TTL after its holder stopped renewing, at once "
        "when the holder released it (a clean stop) or was a process on the same machine that is gone."
    )


class WorkerSettings(FarmBaseSettings):
    """Render workers: the device, precision and the card they believe they have. Each worker
    reads these from its own node's environment (the card and the device are the node's)."""

    model_config = _config("FARM_")

    device: str | None = Field(None, description="Force the torch device (`cpu`, `cuda`, `cuda:1`); default: "
                               "CUDA when available.")
    precision: Literal["auto", "bf16", "fp16", "fp32"] = Field(
        "auto", description="Weights' dtype: `auto` is bf16 where the card supports it, fp16 on older cards, "
        "fp32 on the CPU."
    )
    vae_upcast: Literal["auto", "always", "never"] = Field(
        "auto", description="Decode in fp32: `auto` when the VAE's config says `force_upcast`."
    )
    gpu_vram_gb: float | None = Field(
        None, gt=0, description="Declare the card size (GiB). Without a GPU it simulates cards of this size "
        "(a VRAM budget that raises a real torch.OutOfMemoryError); on a CUDA card it caps the process to it."
    )
    gpu_count: int | None = Field(None, ge=1, description="With FARM_GPU_VRAM_GB: how many such cards this "
                                  "machine has (default: the GPUs nvidia-smi lists, else 1).")
    simulate_tier_cards: bool = Field(False, description="Without a GPU, a worker started for a tier simulates "
                                      "that tier's card (as FARM_GPU_VRAM_GB would): fake multi-node clusters "
                                      "whose nodes cannot each be given their own card size.")
    faults: str | None = Field(None, description="Test and chaos only: injected faults, e.g. "
                               "`oom:denoise:3:count=1` (see farm.models.faults).")
    worker_pythonpath: str | None = Field(
        None, description="Folders (`:`-separated) put on the workers' import path, for code of your own that "
        "workers must import."
    )
    cache_dir: str | None = Field(None, description="farm's cache (tiny and random models, Ray's working folder); "
                                  "default $XDG_CACHE_HOME/farm or ~/.cache/farm.")

    @field_validator("precision", "vae_upcast", mode="before")
    @classmethod
    def _lower(cls, value):
        return value.strip().lower() if isinstance(value, str) else value


class PostSettings(FarmBaseSettings):
    """The CPU stage that makes deliverables (vertical, web, gif ...) from committed renders."""

    model_config = _config("FARM_POST_")

    concurrency: int = Field(1, ge=1, le=1024, description="Items whose deliverables are made at the same time "
                             "(each a Ray task with no GPU); on a cluster, about the CPU nodes' cores divided by "
                             "FARM_POST_NUM_CPUS.")
    num_cpus: float = Field(1.0, ge=0, le=64, description="Ray CPUs each deliverable task reserves (0: it only "
                            "counts against FARM_POST_CONCURRENCY, e.g. on one machine whose CPUs the render "
                            "workers reserve).")
    resource: str | None = Field(None, pattern=r"^[A-Za-z0-9_.-]{1,64}$", description="A custom Ray resource "
                                 "of the CPU node group that deliverable tasks must run on (e.g. `farm_post`); "
                                 "default: any node with free CPUs.")
    ffmpeg_threads: int | None = Field(None, ge=1, le=64, description="ffmpeg threads per deliverable (default: "
                                       "ffmpeg's choice, all cores).")


class ApiSettings(FarmBaseSettings):
    """The HTTP API (`farm serve`, the RayService)."""

    model_config = _config("FARM_API_")

    token: str | None = Field(None, description="Bearer token every request must carry (unset: no authentication, "
                              "which `farm serve` allows only on a loopback host unless FARM_API_ALLOW_ANONYMOUS).")
    allow_anonymous: bool = Field(False, description="Let `farm serve` publish the API beyond loopback (--host) "
                                  "without FARM_API_TOKEN: anyone who reaches the port can submit jobs.")
    max_body_bytes: int = Field(64 * 1024 * 1024, ge=1, description="Largest request body.")
    max_items: int = Field(10_000, ge=1, description="Items per submitted manifest, at most.")
    max_upload_bytes: int = Field(50 * 1024 * 1024, ge=1, description="Largest uploaded image (POST /v1/render).")
    max_upload_pixels: int = Field(40_000_000, ge=1, description="Most pixels in an uploaded image.")
    local_base: str | None = Field(None, description="A folder on the server whose images manifests may name "
                                   "(unset: only URLs and s3:// inputs).")
    allowed_outputs: str = Field(
        "", description="Comma-separated output prefixes (folders, s3://BUCKET/PREFIX) submitted jobs may write "
        "under; empty: the default output only."
    )
    max_streams: int = Field(1000, ge=1, description="Open event streams, all clients together.")
    max_streams_per_client: int = Field(16, ge=1, description="Open event streams per client address.")
    call_timeout_s: float = Field(30.0, gt=0, description="One call from the API to the coordinator, at most.")
    default_output: str = Field(
        DEFAULT_OUTPUT, validation_alias=AliasChoices("default_output", "FARM_DEFAULT_OUTPUT"),
        description="(FarmSettings.default_output)",
    )
    model: str | None = Field(
        None, validation_alias=AliasChoices("model", "FARM_MODEL"), description="(FarmSettings.model)"
    )

    def output_prefixes(self) -> list[str]:
        """The allowed prefixes, canonical (see farm.storage.canonical_output)."""
        from farm.storage import canonical_output

        listed = [p.strip() for p in self.allowed_outputs.split(",") if p.strip()] or [self.default_output]
        return [canonical_output(absolute_location(p)) for p in listed]


class ClientSettings(FarmBaseSettings):
    """The remote CLI (`farm submit`, `farm status`, ...)."""

    model_config = _config("FARM_")

    endpoint: str = Field("http://127.0.0.1:8000", description="The farm's HTTP API (also `--endpoint`).")
    token: str | None = Field(
        None, validation_alias=AliasChoices("token", "FARM_API_TOKEN"),
        description="(ApiSettings.token) sent as the bearer token.",
    )


class FarmSettings(FarmBaseSettings):
    """Everything an operator can set, read once at an edge and passed down."""

    model_config = _config("FARM_")

    model: str | None = Field(None, description=f"The model to render with when a manifest names none (default "
                              f"{DEFAULT_MODEL}; `tiny` for the built-in test model).")
    extra_models: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Models this farm also renders besides `model`, for jobs and items that "
        "name them (`tiny:wan,/models/ltx-video`, or a JSON list): workers switch between models as the queues "
        "need (docs/models.md). A job or item naming any other model is refused, so clients of the API cannot "
        "make the workers download or read arbitrary weights."
    )
    default_output: str = Field(DEFAULT_OUTPUT, description="Output of jobs that name none (folder or "
                                "s3://BUCKET/PREFIX).")
    tiers_file: str | None = Field(None, description="A YAML or JSON tier table replacing the built-in one "
                                   "(see docs/tiers.md).")
    vram_calibration: str | None = Field(None, description="A calibration file written by `farm calibrate`: the "
                                         "VRAM estimator's constants per GPU kind.")
    max_manifest_bytes: int = Field(DEFAULT_MAX_MANIFEST_BYTES, ge=1, description="Largest manifest file read.")
    ray_connect_timeout_s: float = Field(
        60.0, gt=0, le=3600, description="Joining a Ray cluster (`--address`, RAY_ADDRESS): how long to wait for "
        "its head to answer and let this process join, before the command stops with exit 3 and a message that "
        "names the address and what to check."
    )

    engine: EngineSettings = Field(default_factory=EngineSettings)
    coordinator: CoordinatorSettings = Field(default_factory=CoordinatorSettings)
    workers: WorkerSettings = Field(default_factory=WorkerSettings)
    api: ApiSettings = Field(default_factory=ApiSettings)
    post: PostSettings = Field(default_factory=PostSettings)
    storage: StorageConfig = Field(default_factory=StorageConfig)
    url: UrlFetchConfig = Field(default_factory=UrlFetchConfig)
    client: ClientSettings = Field(default_factory=ClientSettings)

    @field_validator("extra_models", mode="before")
    @classmethod
    def _model_list(cls, value: Any) -> Any:
        """`tiny:wan,tiny:ltx` or a JSON list, from an environment variable."""
        if not isinstance(value, str):
            return value
        text = value.strip()
        if text.startswith("["):
            return json.loads(text)
        return [part.strip() for part in text.split(",") if part.strip()]

    @property
    def model_ref(self) -> str:
        return self.model or DEFAULT_MODEL

    @property
    def allowed_models(self) -> list[str]:
        """The models this farm renders: its own first, then `extra_models`."""
        return list(dict.fromkeys([self.model_ref, *self.extra_models]))

    def with_output(self, output: str | None) -> FarmSettings:
        """The same settings with another default output (absolute: other processes use it)."""
        if not output:
            return self
        output = absolute_location(output)
        return self.model_copy(
            update={"default_output": output, "api": self.api.model_copy(update={"default_output": output})}
        )

    def with_model(self, model: str | None) -> FarmSettings:
        if not model:
            return self
        return self.model_copy(update={"model": model, "api": self.api.model_copy(update={"model": model})})


SECTIONS: dict[str, type[BaseSettings]] = {
    "engine": EngineSettings,
    "coordinator": CoordinatorSettings,
    "workers": WorkerSettings,
    "api": ApiSettings,
    "post": PostSettings,
    "storage": StorageConfig,
    "url": UrlFetchConfig,
    "client": ClientSettings,
}


def absolute_location(location: str) -> str:
    """A folder made absolute (the coordinator and workers do not run in the user's folder);
    URIs as they are."""
    return location if "://" in location else os.path.abspath(os.path.expanduser(location))


def load_settings(environ: dict[str, str] | None = None, **overrides: Any) -> FarmSettings:
    """Read every setting from the environment (or `environ`), once. Raises SettingsError."""
    env = dict(os.environ if environ is None else environ)
    parts: dict[str, Any] = {}
    for name, cls in SECTIONS.items():
        parts[name] = _build(cls, env)
    top = _build(FarmSettings, env, **parts)
    top = top.model_copy(update={"api": top.api.model_copy(update={"default_output": top.default_output,
                                                                   "model": top.model})})
    top = with_absolute_paths(top)
    for name, value in overrides.items():
        top = top.model_copy(update={name: value})
    return top


# Path-valued settings, made absolute where they are read: the coordinator and the workers get
# them as arguments and run in other folders (Ray's working folder, another node).
PATH_FIELDS = {
    None: ("default_output", "tiers_file", "vram_calibration"),
    "coordinator": ("state_uri",),
    "workers": ("cache_dir",),
    "api": ("default_output", "local_base"),
}


def with_absolute_paths(settings: FarmSettings) -> FarmSettings:
    def absolute(part: BaseModel, names: tuple[str, ...]) -> BaseModel:
        values = {n: absolute_location(getattr(part, n)) for n in names if getattr(part, n)}
        return part.model_copy(update=values)

    update = {section: absolute(getattr(settings, section), names) for section, names in PATH_FIELDS.items() if section}
    return absolute(settings, PATH_FIELDS[None]).model_copy(update=update)


def _build(cls: type[BaseSettings], env: dict[str, str], **values: Any):
    fields = {field: env[variable] for variable, field in env_variables(cls) if variable in env}
    try:
        with given_values_only():  # exactly the mapping handed over, not os.environ on top
            return cls(**fields, **values)
    except ValidationError as error:
        raise SettingsError(_describe(cls, error, env)) from None


def env_variables(cls: type[BaseModel]) -> list[tuple[str, str]]:
    """(environment variable, field name) of every plain setting of `cls`."""
    prefix = cls.model_config.get("env_prefix", "")
    pairs = []
    for name, field in cls.model_fields.items():
        if isinstance(field.default_factory, type) and issubclass(field.default_factory, BaseModel):
            continue  # a section, with variables of its own
        alias = field.validation_alias
        variable = next(
            (choice for choice in getattr(alias, "choices", ()) if isinstance(choice, str) and choice.isupper()),
            f"{prefix}{name}".upper(),
        )
        pairs.append((variable, name))
    return pairs


def all_variables() -> set[str]:
    """Every FARM_* variable farm reads."""
    return {variable for cls in (FarmSettings, *SECTIONS.values()) for variable, _field in env_variables(cls)}


def _describe(cls: type[BaseModel], error: ValidationError, env: dict[str, str]) -> str:
    variables = dict((field, variable) for variable, field in env_variables(cls))
    problems = []
    for issue in error.errors():
        field = str(issue["loc"][0]) if issue.get("loc") else "?"
        variable = variables.get(field, field)
        value = env.get(variable, issue.get("input"))
        problems.append(f"{variable}={str(value)[:80]!r}: {issue['msg']}")
    return "invalid setting: " + "; ".join(problems) + "; fix or unset it (docs/configuration.md lists every setting)"


# --- docs/configuration.md --------------------------------------------------------------------

OTHER_VARIABLES = [
    ("RAY_ADDRESS", "Join this Ray cluster instead of starting an embedded one (also `--address`)."),
    ("RAY_AUTH_MODE, RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH", "Ray's token authentication, for joining a cluster "
     "started with it (`RAY_AUTH_MODE=token` and the cluster's token). An embedded cluster uses a random token of "
     "its own in RAY_AUTH_TOKEN unless one is set (`RAY_AUTH_MODE=disabled` turns it off); it never writes "
     "`~/.ray/auth_token`."),
    ("HF_HOME, HF_HUB_OFFLINE, HF_TOKEN", "Hugging Face's cache, offline mode and token, as huggingface_hub reads them."),
    ("XDG_CACHE_HOME", "Base of farm's cache when FARM_CACHE_DIR is unset."),
    ("AWS_ENDPOINT_URL_S3, AWS_* credentials", "boto3's own settings (the endpoint when FARM_S3_ENDPOINT_URL is unset; "
     "credentials are never read or logged by farm)."),
    ("PYTORCH_CUDA_ALLOC_CONF", "Set by workers to `expandable_segments:True` unless you set it."),
]


def _type_name(annotation: Any) -> str:
    import typing

    args = typing.get_args(annotation)
    if typing.get_origin(annotation) is Literal:
        return " \\| ".join(f"`{value}`" for value in args)
    if args:
        return " \\| ".join(_type_name(arg) for arg in args)
    return "None" if annotation is type(None) else getattr(annotation, "__name__", str(annotation))


def _default(field) -> str:
    if field.default_factory is not None:
        return "-"
    value = field.default
    if value is None:
        return "unset"
    if value == "":
        return "empty"
    return f"`{value}`"


def configuration_markdown() -> str:
    lines = [
        "# Configuration",
        "",
        "Every setting farm reads, generated from `farm/settings.py` (`python -m farm.settings >",
        "docs/configuration.md`; a test fails when this file is stale). Settings are environment",
        "variables, read once when a process starts (the CLI, the Serve app, the coordinator, each",
        "worker); an invalid value stops that start with a message naming the variable.",
        "",
    ]
    listed: set[str] = set()
    for title, cls in [("General", FarmSettings), *[(name, cls) for name, cls in SECTIONS.items()]]:
        lines += [f"## {title}", "", (cls.__doc__ or "").strip(), "", "| variable | type | default | meaning |",
                  "|---|---|---|---|"]
        for variable, name in env_variables(cls):
            if variable in listed:  # the same variable read by two parts (FARM_API_TOKEN, FARM_MODEL)
                continue
            listed.add(variable)
            field = cls.model_fields[name]
            lines.append(f"| `{variable}` | {_type_name(field.annotation)} | {_default(field)} | "
                         f"{(field.description or '').strip()} |")
        lines.append("")
    lines += ["## Other variables", "", "Read by the libraries farm uses, or set for them.", "",
              "| variable | meaning |", "|---|---|"]
    lines += [f"| `{name}` | {meaning} |" for name, meaning in OTHER_VARIABLES]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(configuration_markdown(), end="")
