"""Deployment files, checked offline: every kustomization renders; KubeRay resources validate
against the CRD schemas in strict mode (unknown fields are errors); built-in kinds validate
against Kubernetes' own schemas; tiers and model settings agree with farm's tier table and
config; the autoscaling parts agree with each other (idle timeout, each tier in its group's
`resources` map as Ray's autoscaler reads it, FARM_AUTOSCALE_MAX_WORKERS = maxReplicas, the drain
shorter than the grace period); the compose stack and the cluster launcher parse and reference files that exist; the
Dockerfiles' commands refer to entry points that exist."""

import copy
import json
import os
import re
import shutil
import subprocess
import tomllib
from functools import lru_cache
from pathlib import Path

import pytest
import yaml

from farm.core.tiers import TierTable

ROOT = Path(__file__).resolve().parents[2]
KUSTOMIZATIONS = ["k8s/overlays/gpu", "k8s/overlays/cpu-dev", "k8s/rayjob"]
KUBERNETES_VERSION = "1.32"
TABLE = TierTable()


def crd_folder() -> Path | None:
    candidates = [os.environ.get("FARM_KUBERAY_CRDS"), ROOT.parent / "shared" / "kuberay" / "crds", Path("/work/shared/kuberay/crds")]
    for candidate in candidates:
        if candidate and (Path(candidate) / "ray.io_rayservices.yaml").is_file():
            return Path(candidate)
    return None


@lru_cache(maxsize=None)
def rendered(path: str) -> list[dict]:
    kubectl = shutil.which("kubectl")
    if not kubectl:
        pytest.skip("kubectl (with its built-in kustomize) is not installed")
    result = subprocess.run([kubectl, "kustomize", str(ROOT / path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def strict(schema: dict) -> dict:
    """KubeRay's strict mode: objects that declare properties accept nothing else."""
    schema = copy.deepcopy(schema)

    def walk(node):
        if isinstance(node, dict):
            if node.get("type") == "object" and "properties" in node and not node.get("x-kubernetes-preserve-unknown-fields"):
                node.setdefault("additionalProperties", False)
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(schema)
    return schema


@lru_cache(maxsize=None)
def crd_schema(kind: str) -> dict:
    folder = crd_folder()
    if folder is None:
        pytest.skip("KubeRay CRD schemas not found (set FARM_KUBERAY_CRDS)")
    document = yaml.safe_load((folder / f"ray.io_{kind.lower()}s.yaml").read_text())
    version = next(v for v in document["spec"]["versions"] if v["name"] == "v1")
    return strict(version["schema"]["openAPIV3Schema"])


@pytest.mark.parametrize("path", KUSTOMIZATIONS)
def test_kuberay_resources_validate_strictly_against_the_crds(path):
    import jsonschema

    kuberay = [doc for doc in rendered(path) if doc["apiVersion"] == "ray.io/v1"]
    assert kuberay
    for doc in kuberay:
        validator = jsonschema.Draft7Validator(crd_schema(doc["kind"]))
        errors = sorted(validator.iter_errors(doc), key=lambda e: list(e.path))
        assert not errors, [f"{doc['kind']} {'/'.join(map(str, e.path))}: {e.message}" for e in errors[:10]]


def test_strict_mode_catches_a_typo():
    import jsonschema

    doc = copy.deepcopy(next(d for d in rendered("k8s/overlays/gpu") if d["kind"] == "RayService"))
    doc["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["maxReplica"] = 3
    assert list(jsonschema.Draft7Validator(crd_schema("RayService")).iter_errors(doc))


@pytest.mark.parametrize("path", KUSTOMIZATIONS)
def test_builtin_kinds_validate_against_kubernetes_schemas(path):
    import kubernetes_validate

    builtin = [doc for doc in rendered(path) if not doc["apiVersion"].startswith(("ray.io/", "monitoring.coreos.com/"))]
    assert builtin
    for doc in builtin:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_monitoring_resources_select_the_farm_pods():
    docs = rendered("k8s/overlays/gpu")
    monitors = {d["metadata"]["name"]: d for d in docs if d["kind"] == "PodMonitor"}
    assert set(monitors) == {"farm-api", "farm-ray"}
    service = next(d for d in docs if d["kind"] == "RayService")
    head = service["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]
    head_ports = {p["name"] for p in head["spec"]["containers"][0]["ports"]}
    labels = head["metadata"]["labels"]
    for monitor in monitors.values():
        assert monitor["spec"]["selector"]["matchLabels"].items() <= labels.items()
        assert {e["port"] for e in monitor["spec"]["podMetricsEndpoints"]} <= head_ports
    dashboards = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "farm-dashboards")
    assert dashboards["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert {"farm-overview.json", "farm-tier.json"} <= set(dashboards["data"])


def ray_resource(path: str) -> dict:
    return next(d for d in rendered(path) if d["kind"] in ("RayService", "RayJob"))


def cluster_spec(path: str) -> dict:
    ray = ray_resource(path)
    return ray["spec"].get("rayClusterConfig") or ray["spec"]["rayClusterSpec"]


def worker_groups(path: str) -> list[dict]:
    return cluster_spec(path)["workerGroupSpecs"]


GPU_PATHS = ["k8s/overlays/gpu", "k8s/rayjob"]
# rayStartParams that KubeRay refuses next to a group's `resources` map (validateRayGroupResources).
RAY_START_RESOURCE_PARAMS = ("num-cpus", "num-gpus", "memory", "resources")


def gpu_limit(group: dict) -> int:
    return int(group["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"])


def group_problems(group: dict) -> list[str]:
    """What is wrong with a GPU worker group: its tier, its `resources` map, its autoscaling bounds."""
    name = group["groupName"]
    match = re.fullmatch(r"gpu-(\d+g)", name)
    if not match:
        return [f"{name}: a GPU group is named gpu-<tier>"]
    tier = match.group(1)
    problems = []
    if tier not in TABLE:
        problems.append(f"{name}: {tier} is not in farm's tier table ({TABLE.names()})")
    gpus = gpu_limit(group)
    if gpus != 1:
        problems.append(f"{name}: nvidia.com/gpu limit {gpus}, farm runs one worker per GPU pod")
    if group.get("resources") != {f"farm_tier_{tier}": str(gpus)}:
        problems.append(f"{name}: resources {group.get('resources')!r}, want {{farm_tier_{tier}: '{gpus}'}} (GPU comes "
                        "from the nvidia.com/gpu limit)")
    mixed = [key for key in RAY_START_RESOURCE_PARAMS if key in group.get("rayStartParams", {})]
    if mixed:
        problems.append(f"{name}: rayStartParams {mixed} next to `resources` (KubeRay rejects the group)")
    if group["minReplicas"] != 0:
        problems.append(f"{name}: minReplicas {group['minReplicas']}, autoscaled groups start at 0")
    if not group["minReplicas"] <= group.get("replicas", 0) <= group["maxReplicas"]:
        problems.append(f"{name}: replicas outside minReplicas..maxReplicas")
    if not any(t["key"] == "nvidia.com/gpu" for t in group["template"]["spec"].get("tolerations", [])):
        problems.append(f"{name}: the nvidia.com/gpu taint is not tolerated")
    return problems


@pytest.mark.parametrize("path", GPU_PATHS)
def test_gpu_worker_groups_advertise_their_tier_in_the_resources_map(path):
    groups = worker_groups(path)
    assert groups
    assert [problem for group in groups for problem in group_problems(group)] == []


def test_a_json_string_of_resources_or_num_gpus_in_ray_start_params_is_caught():
    group = copy.deepcopy(worker_groups("k8s/overlays/gpu")[0])
    assert group_problems(group) == []
    old_style = copy.deepcopy(group)
    old_style["rayStartParams"].update({"num-gpus": "1", "resources": '"{\\"farm_tier_12g\\": 1}"'})
    assert any("KubeRay rejects" in p for p in group_problems(old_style))
    del old_style["resources"]
    assert any("want {farm_tier_12g: '1'}" in p for p in group_problems(old_style))
    wrong_tier = copy.deepcopy(group)
    wrong_tier["resources"] = {"farm_tier_24g": "1"}
    assert group_problems(wrong_tier)


@pytest.mark.parametrize("path", KUSTOMIZATIONS)
def test_the_autoscaler_runs_with_an_idle_timeout(path):
    spec = cluster_spec(path)
    assert spec["enableInTreeAutoscaling"] is True
    options = spec["autoscalerOptions"]
    assert isinstance(options["idleTimeoutSeconds"], int) and 0 < options["idleTimeoutSeconds"] <= 600
    assert options["upscalingMode"] == "Default"  # not rate-limited: a queue's GPUs are asked for at once
    assert {"cpu", "memory"} <= set(options["resources"]["requests"]) and {"cpu", "memory"} <= set(options["resources"]["limits"])


@pytest.mark.parametrize("path", GPU_PATHS)
def test_the_ray_autoscaler_finds_each_tier_on_its_own_group(path):
    """Ray's KubeRay autoscaler (the installed version) derives its node types from the rendered
    cluster: the bundle farm asks for, {"GPU": 1, "farm_tier_<tier>": 1}, fits that tier's group only."""
    try:
        from ray.autoscaler._private.kuberay.autoscaling_config import _derive_autoscaling_config_from_ray_cr
    except ImportError:
        pytest.skip("ray's KubeRay autoscaler config is not importable")
    ray = ray_resource(path)
    spec = cluster_spec(path)
    config = _derive_autoscaling_config_from_ray_cr({"metadata": {"name": "farm", "namespace": ray["metadata"]["namespace"]},
                                                     "spec": copy.deepcopy(spec)})
    assert config["idle_timeout_minutes"] == spec["autoscalerOptions"]["idleTimeoutSeconds"] / 60
    node_types = config["available_node_types"]
    for group in spec["workerGroupSpecs"]:
        tier = group["groupName"].removeprefix("gpu-")
        bundle = {"GPU": 1, f"farm_tier_{tier}": 1}
        fits = [name for name, node in node_types.items() if all(node["resources"].get(k, 0) >= v for k, v in bundle.items())]
        assert fits == [group["groupName"]], (bundle, {n: t["resources"] for n, t in node_types.items()})
        assert node_types[group["groupName"]]["max_workers"] == group["maxReplicas"]


def test_no_deprecated_unhealthy_thresholds_anywhere_in_k8s():
    files = [p for p in (ROOT / "k8s").rglob("*") if p.is_file()]
    assert files
    assert [str(p.relative_to(ROOT)) for p in files if "UnhealthySecondThreshold" in p.read_text()] == []

    def keys(node):
        if isinstance(node, dict):
            for key, value in node.items():
                yield key
                yield from keys(value)
        elif isinstance(node, list):
            for value in node:
                yield from keys(value)

    for path in KUSTOMIZATIONS:
        assert [k for doc in rendered(path) for k in keys(doc) if k.endswith("UnhealthySecondThreshold")] == []


def env_of(container: dict) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}


def tier_counts(text: str) -> dict[str, int]:
    """`12g=16,24g=8` as FARM_AUTOSCALE_MAX_WORKERS writes it."""
    pairs = [part.split("=", 1) for part in text.split(",") if part.strip()]
    assert all(len(pair) == 2 for pair in pairs), text
    return {tier.strip(): int(count) for tier, count in pairs}


def autoscale_cap_problems(spec: dict) -> list[str]:
    """FARM_AUTOSCALE_MAX_WORKERS on the head names every tier group with its maxReplicas (in GPUs)."""
    head = env_of(spec["headGroupSpec"]["template"]["spec"]["containers"][0])
    caps = tier_counts(head.get("FARM_AUTOSCALE_MAX_WORKERS", ""))
    groups = {}
    for group in spec["workerGroupSpecs"]:
        for resource, count in group.get("resources", {}).items():
            if resource.startswith("farm_tier_"):
                groups[resource.removeprefix("farm_tier_")] = group["maxReplicas"] * group.get("numOfHosts", 1) * int(count)
    return [f"{tier}: FARM_AUTOSCALE_MAX_WORKERS {caps.get(tier)} but the group allows {groups.get(tier)}"
            for tier in sorted(set(caps) | set(groups)) if caps.get(tier) != groups.get(tier)]


@pytest.mark.parametrize("path", KUSTOMIZATIONS)
def test_the_head_asks_for_no_more_workers_than_the_groups_allow(path):
    spec = cluster_spec(path)
    assert autoscale_cap_problems(spec) == []
    if path in GPU_PATHS:
        head = env_of(spec["headGroupSpec"]["template"]["spec"]["containers"][0])
        assert tier_counts(head["FARM_AUTOSCALE_MAX_WORKERS"])  # set, not empty: the farm requests GPUs
    wrong = copy.deepcopy(spec)
    if wrong["workerGroupSpecs"] and wrong["workerGroupSpecs"][0].get("resources"):
        wrong["workerGroupSpecs"][0]["maxReplicas"] += 1
        assert autoscale_cap_problems(wrong)


def drain_problems(group: dict) -> list[str]:
    """A pod told to stop drains for RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S, which must end before
    Kubernetes kills it (terminationGracePeriodSeconds, 30 when unset), with time left to stop."""
    pod = group["template"]["spec"]
    drain = env_of(pod["containers"][0]).get("RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S")
    if drain is None:
        return [f"{group['groupName']}: RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S is not set"]
    grace = pod.get("terminationGracePeriodSeconds", 30)
    if not 0 < float(drain) <= grace - 5:
        return [f"{group['groupName']}: drain {drain} s, grace period {grace} s (drain at least 5 s shorter)"]
    return []


@pytest.mark.parametrize("path", GPU_PATHS)
def test_gpu_pods_drain_within_their_termination_grace_period(path):
    groups = worker_groups(path)
    assert [problem for group in groups for problem in drain_problems(group)] == []
    late = copy.deepcopy(groups[0])
    late["template"]["spec"]["terminationGracePeriodSeconds"] = 40
    assert drain_problems(late)


def test_the_gpu_overlay_covers_small_and_big_cards_with_affinity():
    groups = {g["groupName"]: g for g in worker_groups("k8s/overlays/gpu")}
    assert {"gpu-12g", "gpu-24g", "gpu-80g"} <= set(groups)
    for group in groups.values():
        terms = group["template"]["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        expression = terms["nodeSelectorTerms"][0]["matchExpressions"][0]
        assert expression["key"] == "nvidia.com/gpu.product" and expression["values"]


def config_of(path: str) -> dict:
    return next(d for d in rendered(path) if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "farm-config")["data"]


def test_model_settings_agree_with_the_volumes_and_the_farm_config():
    from farm.settings import all_variables

    gpu = config_of("k8s/overlays/gpu")
    assert gpu["FARM_MODEL"].startswith("/models/") and gpu["HF_HUB_OFFLINE"] == "1"
    service = next(d for d in rendered("k8s/overlays/gpu") if d["kind"] == "RayService")
    pods = [service["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]] + [
        g["template"] for g in service["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    ]
    for pod in pods:
        mounts = {m["mountPath"] for m in pod["spec"]["containers"][0].get("volumeMounts", [])}
        assert "/models" in mounts
    download = next(d for d in rendered("k8s/overlays/gpu") if d["kind"] == "Job")
    assert "/models/i2vgen-xl" in download["spec"]["template"]["spec"]["containers"][0]["command"][-1]
    assert config_of("k8s/overlays/cpu-dev")["FARM_MODEL"] == "tiny"
    known = all_variables()
    for key in gpu:
        if key.startswith("FARM_"):
            assert key in known, f"{key} is not a farm setting"


def test_the_serve_config_points_at_the_farm_app():
    from farm.serve import app

    service = next(d for d in rendered("k8s/overlays/gpu") if d["kind"] == "RayService")
    serve = yaml.safe_load(service["spec"]["serveConfigV2"])
    (application,) = serve["applications"]
    module, _, attribute = application["import_path"].partition(":")
    assert module == app.__name__ and attribute == "app" and callable(app.build_app)
    assert serve["http_options"]["port"] == 8000


@pytest.mark.parametrize("path", ["k8s/overlays/gpu", "k8s/overlays/cpu-dev"])
def test_upgrades_start_a_new_cluster_and_leave_the_old_one_time_to_commit(path):
    """A rayClusterConfig change brings up a second cluster; the job lease (FARM_JOB_LEASE_TTL_S)
    keeps its coordinator off the jobs the old one still renews. The old cluster must live long
    enough after the switch for its in-flight items to commit."""
    from farm.settings import CoordinatorSettings

    spec = next(d for d in rendered(path) if d["kind"] == "RayService")["spec"]
    assert spec["upgradeStrategy"]["type"] == "NewCluster"
    assert spec["rayClusterDeletionDelaySeconds"] >= CoordinatorSettings().job_lease_ttl_s


def test_the_ray_job_runs_farm_on_the_mounted_manifest():
    job = next(d for d in rendered("k8s/rayjob") if d["kind"] == "RayJob")
    assert job["spec"]["entrypoint"].split()[:2] == ["farm", "run"]
    manifest_path = job["spec"]["entrypoint"].split()[2]
    head = job["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    mounts = {m["mountPath"]: m["name"] for m in head["containers"][0]["volumeMounts"]}
    assert os.path.dirname(manifest_path) in mounts
    from farm.storage.manifest_file import load_manifest

    load_manifest(ROOT / "k8s/rayjob/manifest.yaml")  # the example manifest is valid


def test_the_compose_stack_parses_and_references_existing_files():
    compose_dir = ROOT / "deploy/compose"
    compose = yaml.safe_load((compose_dir / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"ray-head", "worker", "minio", "prometheus", "grafana"} <= set(services)
    for name, service in services.items():
        build = service.get("build")
        if build:
            context = (compose_dir / build["context"]).resolve()
            assert (context / build["dockerfile"]).is_file(), name
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            assert (compose_dir / source).exists(), f"{name}: {source}"
    prometheus = yaml.safe_load((compose_dir / "prometheus.yml").read_text())
    assert prometheus["rule_files"] == ["rules/farm-alerts.yml"]


def test_the_compose_api_runs_on_the_head_with_token_auth_and_a_private_dashboard():
    """Serve's HTTP proxy runs on Ray nodes: the API is a driver on the head, which publishes its
    port, and Prometheus scrapes it there. tests/integration/test_compose_topology.py runs these
    commands; here, the shape."""
    compose_dir = ROOT / "deploy/compose"
    compose = yaml.safe_load((compose_dir / "docker-compose.yml").read_text())
    services = compose["services"]
    head = services["ray-head"]
    script = head["command"][-1]
    assert head["command"][:2] == ["sh", "-c"] and "farm serve --address auto" in script
    assert "serve" not in services  # no driver without a raylet of its own
    ports = head["ports"]
    assert "8000:8000" in ports
    dashboard = [p for p in ports if p.endswith(":8265")]
    assert dashboard == ["127.0.0.1:8265:8265"]
    for name in ("minio", "prometheus", "grafana"):
        assert all(p.startswith("127.0.0.1:") for p in services[name]["ports"]), name
    env = compose["x-farm"]["environment"]
    assert env["RAY_AUTH_MODE"] == "token"
    for secret in ("RAY_AUTH_TOKEN", "FARM_API_TOKEN"):  # required from .env, nothing committed
        assert env[secret].startswith(f"${{{secret}:?"), secret
    assert (compose_dir / ".gitignore").read_text().split() == [".env"]
    prometheus = yaml.safe_load((compose_dir / "prometheus.yml").read_text())
    targets = {job["job_name"]: job["static_configs"][0]["targets"] for job in prometheus["scrape_configs"]}
    assert targets["farm"] == ["ray-head:8000"]
    assert targets["ray"] == ["ray-head:8080", "worker:8080"]


def test_the_cluster_launcher_maps_node_types_to_tiers():
    config = yaml.safe_load((ROOT / "deploy/ray/cluster.yaml").read_text())
    gpu_types = {name: t for name, t in config["available_node_types"].items() if t["resources"].get("GPU")}
    assert len(gpu_types) >= 2
    for name, node_type in gpu_types.items():
        tiers = {k.removeprefix("farm_tier_"): v for k, v in node_type["resources"].items() if k.startswith("farm_tier_")}
        assert len(tiers) == 1, name
        (tier, count), = tiers.items()
        assert tier in TABLE and count == node_type["resources"]["GPU"]
    for target, source in config["file_mounts"].items():
        if source.startswith("~/.farm/"):
            continue  # the tokens, made on the user's machine (never in the repository)
        assert (ROOT / source).exists(), source
    assert config["head_node_type"] in config["available_node_types"]
    assert any("farm serve" in command for command in config["head_start_ray_commands"])


@pytest.mark.parametrize("dockerfile", ["Dockerfile.gpu", "Dockerfile.cpu"])
def test_dockerfiles_copy_what_exists_and_run_entry_points_that_exist(dockerfile):
    text = (ROOT / "deploy/docker" / dockerfile).read_text()
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    available = set(scripts) | {"ray", "python", "pip"}  # ray's console script comes with ray
    for source in re.findall(r"^COPY\s+(.+?)\s+\S+$", text, flags=re.M):
        for item in source.split():
            assert (ROOT / item).exists(), f"COPY {item}"
    for line in re.findall(r"^(?:CMD|ENTRYPOINT)\s+(\[.*\])$", text, flags=re.M):
        assert json.loads(line)[0] in available
    for command in re.findall(r"&&\s*(\w+)\s+--version", text):
        assert command in available
    # A numeric non-root user (Kubernetes' runAsNonRoot can verify only a uid), set before CMD;
    # HEALTHCHECK, constraints and the torch check: tests/unit/test_packaging.py.
    users = re.findall(r"^USER\s+(\S+)$", text, flags=re.M)
    assert users and users[-1] in ("1000", "1000:1000"), "runs as uid 1000"
    assert text.rindex("\nUSER ") < text.index("\nCMD "), "USER before CMD"
    assert re.search(r"^HEALTHCHECK\s", text, flags=re.M), "a HEALTHCHECK"
    for command in re.findall(r"^\s*CMD\s+(\[.*\])$", text, flags=re.M):  # HEALTHCHECK's CMD too
        assert json.loads(command)[0] in available
    assert "/models" not in re.findall(r"^COPY.*$", text, flags=re.M), "no weights in the image"


def test_the_api_replica_is_placed_on_the_head_like_its_proxy():
    """Serve's proxy runs on the head only (proxy_location HeadOnly, in the RayService and in
    `farm serve`); a 0-CPU API replica could otherwise be placed on a GPU node, where it would
    keep that node from scaling in."""
    from farm.runtime.service import serve_deployment
    from farm.settings import load_settings

    options = serve_deployment(load_settings()).ray_actor_options
    assert options["resources"].get("node:__internal_head__", 0) > 0


def test_the_cluster_launcher_turns_ray_token_auth_on_and_keeps_the_dashboard_private():
    text = (ROOT / "deploy/ray/cluster.yaml").read_text()
    config = yaml.safe_load(text)
    options = " ".join(config["docker"]["run_options"])
    assert "--env RAY_AUTH_MODE=token" in options
    token_path = options.split("RAY_AUTH_TOKEN_PATH=")[1].split()[0]
    assert config["file_mounts"][token_path].startswith("~/.farm/")  # copied from the user's machine
    assert "RAY_AUTH_TOKEN=" not in text and "FARM_API_TOKEN=" not in text.replace('FARM_API_TOKEN="$(cat', "")
    starts = config["head_start_ray_commands"]
    assert not any("dashboard-host=0.0.0.0" in c for c in starts)
    serve_command = next(c for c in starts if "farm serve" in c)
    assert "FARM_API_TOKEN=" in serve_command and "/etc/farm/api-token" in serve_command
    assert config["file_mounts"]["/etc/farm/api-token"].startswith("~/.farm/")
