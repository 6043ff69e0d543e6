"""Deployment files, checked offline: every kustomization renders; KubeRay resources validate
against the CRD schemas in strict mode (unknown fields are errors); built-in kinds validate
against Kubernetes' own schemas; tiers and model settings agree with farm's tier table and
config; the compose stack and the cluster launcher parse and reference files that exist; the
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


def worker_groups(path: str) -> list[dict]:
    docs = rendered(path)
    ray = next(d for d in docs if d["kind"] in ("RayService", "RayJob"))
    spec = ray["spec"].get("rayClusterConfig") or ray["spec"]["rayClusterSpec"]
    return spec["workerGroupSpecs"]


@pytest.mark.parametrize("path", ["k8s/overlays/gpu", "k8s/rayjob"])
def test_gpu_worker_groups_advertise_the_tiers_of_the_tier_table(path):
    groups = worker_groups(path)
    assert groups
    for group in groups:
        match = re.fullmatch(r"gpu-(\d+g)", group["groupName"])
        assert match, group["groupName"]
        tier = match.group(1)
        assert tier in TABLE, f"{tier} is not in farm's tier table ({TABLE.names()})"
        resources = json.loads(json.loads(group["rayStartParams"]["resources"]))
        assert resources == {f"farm_tier_{tier}": 1}
        container = group["template"]["spec"]["containers"][0]
        gpus = container["resources"]["limits"]["nvidia.com/gpu"]
        assert str(gpus) == group["rayStartParams"]["num-gpus"] == "1"
        tolerations = group["template"]["spec"].get("tolerations", [])
        assert any(t["key"] == "nvidia.com/gpu" for t in tolerations)
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]


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
    assert {"ray-head", "worker", "serve", "minio", "prometheus", "grafana"} <= set(services)
    for name, service in services.items():
        build = service.get("build")
        if build:
            context = (compose_dir / build["context"]).resolve()
            assert (context / build["dockerfile"]).is_file(), name
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            assert (compose_dir / source).exists(), f"{name}: {source}"
    assert "farm" in services["serve"]["command"] and "serve" in services["serve"]["command"]
    prometheus = yaml.safe_load((compose_dir / "prometheus.yml").read_text())
    assert prometheus["rule_files"] == ["rules/farm-alerts.yml"]


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
    assert re.search(r"^USER\s+farm$", text, flags=re.M), "runs as a non-root user"
    assert "/models" not in re.findall(r"^COPY.*$", text, flags=re.M), "no weights in the image"
