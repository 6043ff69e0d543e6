"""The Kubernetes manifests, closed by default and able to start, checked offline on the rendered
overlays (`kubectl kustomize`, as in test_deploy.py):

- every pod template passes the Pod Security "restricted" profile (including the containers
  KubeRay adds from the manifests: the autoscaler sidecar, the RayJob submitter), and the farm's
  namespaces enforce it;
- every long-running container has readiness and liveness probes that need nothing in the image
  (no wget/curl), and no Ray pod's probe waits for Serve's :8000;
- Ray token authentication is on; no Service or Ingress publishes the dashboard; the
  NetworkPolicies admit only the API port from anywhere, Ray's ports from the farm's own Ray pods,
  the KubeRay operator and Prometheus;
- the cpu-dev overlay mounts no volume claim (it works with kind's ReadWriteOnce default class);
  the GPU overlay's weights claim is ReadWriteMany with its StorageClass set;
- no password or token is committed outside the development overlay's MinIO credentials.

Each check is a function that lists problems, with a test that it catches a bad example."""

import copy
import re

import pytest
import yaml

from .test_deploy import KUSTOMIZATIONS, ROOT, rendered

SERVICE_OVERLAYS = ["k8s/overlays/gpu", "k8s/overlays/cpu-dev"]
OPERATOR_NAMESPACE = "kuberay"  # docs/deploy.md installs the KubeRay operator there
MONITORING_NAMESPACE = "monitoring"  # and kube-prometheus-stack there
FARM_UID = 1000  # the images' farm user
API_PORT = 8000
SERVE_PROXY_PORT = 8000

# --- pod templates -----------------------------------------------------------------------------

POD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"}


def ray_cluster_spec(doc: dict) -> dict | None:
    if doc["kind"] == "RayService":
        return doc["spec"]["rayClusterConfig"]
    if doc["kind"] == "RayJob":
        return doc["spec"].get("rayClusterSpec")
    if doc["kind"] == "RayCluster":
        return doc["spec"]
    return None


def pod_templates(doc: dict) -> list[tuple[str, dict, list[dict]]]:
    """(where, pod template, containers KubeRay adds to it from the manifest) for every pod the
    document makes."""
    name = f"{doc['kind']}/{doc['metadata']['name']}"
    if doc["kind"] in POD_KINDS:
        return [(name, doc["spec"]["template"], [])]
    if doc["kind"] == "CronJob":
        return [(name, doc["spec"]["jobTemplate"]["spec"]["template"], [])]
    if doc["kind"] == "Pod":
        return [(name, {"metadata": doc["metadata"], "spec": doc["spec"]}, [])]
    spec = ray_cluster_spec(doc)
    if spec is None:
        return []
    added = []
    if spec.get("enableInTreeAutoscaling"):
        # KubeRay's autoscaler sidecar: its securityContext is autoscalerOptions.securityContext.
        added.append({"name": "autoscaler", "securityContext": spec.get("autoscalerOptions", {}).get("securityContext")})
    found = [(f"{name} head", spec["headGroupSpec"]["template"], added)]
    for group in spec.get("workerGroupSpecs", []):
        found.append((f"{name} group {group['groupName']}", group["template"], []))
    if doc["kind"] == "RayJob" and doc["spec"].get("submissionMode", "K8sJobMode") == "K8sJobMode":
        # Without submitterPodTemplate KubeRay's default submitter has no securityContext at all.
        found.append((f"{name} submitter", doc["spec"].get("submitterPodTemplate") or {"spec": {"containers": [{"name": "ray-job-submitter"}]}}, []))
    return found


def all_pod_templates(path: str) -> list[tuple[str, dict, list[dict]]]:
    return [t for doc in rendered(path) for t in pod_templates(doc)]


# --- the "restricted" Pod Security profile -----------------------------------------------------

ALLOWED_VOLUME_TYPES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim", "projected", "secret"}
ALLOWED_SECCOMP = {"RuntimeDefault", "Localhost"}


def restricted_violations(template: dict, added: list[dict] = ()) -> list[str]:
    """What keeps a pod template from the Pod Security "restricted" profile (Kubernetes' pod
    security standards, v1.32): host namespaces, hostPath and other volume types, privileged or
    escalating containers, capabilities beyond NET_BIND_SERVICE (and ALL not dropped), root or
    unset runAsNonRoot, a seccomp profile other than RuntimeDefault/Localhost, host ports,
    sysctls, procMount, AppArmor/SELinux overrides."""
    spec = template.get("spec", {})
    pod_ctx = spec.get("securityContext") or {}
    problems = []
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(key):
            problems.append(f"{key} is set")
    for volume in spec.get("volumes", []):
        kinds = set(volume) - {"name"}
        if not kinds <= ALLOWED_VOLUME_TYPES:
            problems.append(f"volume {volume.get('name')}: {sorted(kinds - ALLOWED_VOLUME_TYPES)} not allowed")
    if pod_ctx.get("sysctls"):
        problems.append("sysctls are set")
    if pod_ctx.get("runAsUser") == 0:
        problems.append("the pod runs as uid 0")
    pod_seccomp = (pod_ctx.get("seccompProfile") or {}).get("type")
    if pod_seccomp is not None and pod_seccomp not in ALLOWED_SECCOMP:
        problems.append(f"pod seccompProfile {pod_seccomp}")
    containers = [(c, "container") for c in spec.get("containers", [])]
    containers += [(c, "initContainer") for c in spec.get("initContainers", [])]
    containers += [(c, "ephemeralContainer") for c in spec.get("ephemeralContainers", [])]
    containers += [(c, "added container") for c in added]
    if not spec.get("containers"):
        problems.append("no containers")
    for container, role in containers:
        where = f"{role} {container.get('name')}"
        ctx = container.get("securityContext") or {}
        if ctx.get("privileged"):
            problems.append(f"{where}: privileged")
        if ctx.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{where}: allowPrivilegeEscalation is not false")
        capabilities = ctx.get("capabilities") or {}
        if "ALL" not in (capabilities.get("drop") or []):
            problems.append(f"{where}: capabilities do not drop ALL")
        if set(capabilities.get("add") or []) - {"NET_BIND_SERVICE"}:
            problems.append(f"{where}: adds capabilities {sorted(set(capabilities['add']) - {'NET_BIND_SERVICE'})}")
        run_as_non_root = ctx.get("runAsNonRoot", pod_ctx.get("runAsNonRoot"))
        if run_as_non_root is not True:
            problems.append(f"{where}: runAsNonRoot is not true")
        if ctx.get("runAsUser") == 0:
            problems.append(f"{where}: runs as uid 0")
        seccomp = (ctx.get("seccompProfile") or {}).get("type") or pod_seccomp
        if seccomp not in ALLOWED_SECCOMP:
            problems.append(f"{where}: seccompProfile {seccomp or 'unset'} (RuntimeDefault or Localhost)")
        if ctx.get("procMount") not in (None, "Default"):
            problems.append(f"{where}: procMount {ctx['procMount']}")
        if any(port.get("hostPort") for port in container.get("ports", [])):
            problems.append(f"{where}: a hostPort")
        if (ctx.get("windowsOptions") or {}).get("hostProcess"):
            problems.append(f"{where}: a Windows host process")
        if (ctx.get("seLinuxOptions") or {}).get("user") or (ctx.get("seLinuxOptions") or {}).get("role"):
            problems.append(f"{where}: SELinux user/role set")
    return problems


@pytest.mark.parametrize("path", KUSTOMIZATIONS)
def test_every_pod_template_passes_the_restricted_profile(path):
    templates = all_pod_templates(path)
    assert templates
    problems = [f"{where}: {p}" for where, template, added in templates for p in restricted_violations(template, added)]
    assert problems == []


def test_the_restricted_check_catches_bad_templates():
    _, head, added = next(t for t in all_pod_templates("k8s/overlays/gpu") if t[0].endswith(" head"))
    assert restricted_violations(head, added) == []

    def broken(change):
        template = copy.deepcopy(head)
        change(template["spec"])
        return restricted_violations(template, added)

    assert any("seccompProfile" in p for p in broken(lambda s: s["securityContext"].pop("seccompProfile")))
    assert any("runAsNonRoot" in p for p in broken(lambda s: s["securityContext"].pop("runAsNonRoot")))
    assert any("hostPath" in p for p in broken(lambda s: s.setdefault("volumes", []).append({"name": "w", "hostPath": {"path": "/w"}})))
    assert any("hostNetwork" in p for p in broken(lambda s: s.update(hostNetwork=True)))
    assert any("allowPrivilegeEscalation" in p for p in broken(lambda s: s["containers"][0]["securityContext"].pop("allowPrivilegeEscalation")))
    assert any("drop ALL" in p for p in broken(lambda s: s["containers"][0]["securityContext"].pop("capabilities")))
    assert any("adds capabilities" in p for p in broken(lambda s: s["containers"][0]["securityContext"]["capabilities"].update(add=["SYS_ADMIN"])))
    assert any("privileged" in p for p in broken(lambda s: s["containers"][0]["securityContext"].update(privileged=True)))
    assert any("uid 0" in p for p in broken(lambda s: s["securityContext"].update(runAsUser=0)))
    assert any("hostPort" in p for p in broken(lambda s: s["containers"][0]["ports"].append({"containerPort": 1, "hostPort": 1})))
    init = {"name": "weights", "image": "x"}
    assert any("initContainer weights" in p for p in broken(lambda s: s.setdefault("initContainers", []).append(init)))
    # The autoscaler sidecar KubeRay adds counts too, with autoscalerOptions.securityContext.
    assert any("added container autoscaler" in p for p in restricted_violations(head, [{"name": "autoscaler"}]))
    # A RayJob without submitterPodTemplate gets KubeRay's default submitter: no securityContext.
    job = copy.deepcopy(next(d for d in rendered("k8s/rayjob") if d["kind"] == "RayJob"))
    del job["spec"]["submitterPodTemplate"]
    submitter = next(t for t in pod_templates(job) if t[0].endswith("submitter"))
    assert restricted_violations(submitter[1], submitter[2])


@pytest.mark.parametrize("path", KUSTOMIZATIONS)
def test_the_farm_images_run_as_their_farm_user(path):
    for doc in rendered(path):
        if ray_cluster_spec(doc) is None:
            continue
        for where, template, _ in pod_templates(doc):
            assert template["spec"]["securityContext"]["runAsUser"] == FARM_UID, where


@pytest.mark.parametrize("path", SERVICE_OVERLAYS)
def test_the_overlay_namespaces_enforce_the_restricted_profile(path):
    (namespace,) = [d for d in rendered(path) if d["kind"] == "Namespace"]
    labels = namespace["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
    assert all(d["metadata"].get("namespace") == namespace["metadata"]["name"] for d in rendered(path) if d["kind"] != "Namespace")


# --- probes ------------------------------------------------------------------------------------

def probe_problems(container: dict, ray_pod: bool) -> list[str]:
    """A long-running container needs readiness and liveness probes; none may run wget or curl
    (the images have neither); a Ray pod's probes must not wait for Serve's proxy on :8000 (the
    workers host none, and KubeRay deploys Serve only once the head is Ready), and a Ray container
    needs both probes set or KubeRay injects its own (wget-based for RayService workers)."""
    name = container.get("name")
    problems = []
    for kind in ("readinessProbe", "livenessProbe"):
        if not container.get(kind):
            problems.append(f"{name}: no {kind}")
    for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
        probe = container.get(kind)
        if not probe:
            continue
        command = " ".join((probe.get("exec") or {}).get("command", []))
        if re.search(r"\b(wget|curl)\b", command):
            problems.append(f"{name}: {kind} runs {command!r}")
        if ray_pod:
            port = (probe.get("httpGet") or probe.get("tcpSocket") or probe.get("grpc") or {}).get("port")
            if port in (SERVE_PROXY_PORT, "serve") or re.search(rf":{SERVE_PROXY_PORT}\b", command):
                problems.append(f"{name}: {kind} waits for Serve's :{SERVE_PROXY_PORT}")
    return problems


def long_running_containers(path: str) -> list[tuple[str, dict, bool]]:
    found = []
    for doc in rendered(path):
        if doc["kind"] in ("Job", "CronJob"):
            continue  # run to completion: readiness means nothing there
        ray = ray_cluster_spec(doc) is not None
        for where, template, _ in pod_templates(doc):
            if where.endswith("submitter"):
                continue  # the RayJob's submitter is a Job too
            for container in template["spec"]["containers"]:
                found.append((where, container, ray))
    return found


@pytest.mark.parametrize("path", KUSTOMIZATIONS)
def test_every_long_running_container_has_probes_the_images_can_run(path):
    containers = long_running_containers(path)
    assert any(ray for _, _, ray in containers)
    assert [f"{where}: {p}" for where, c, ray in containers for p in probe_problems(c, ray)] == []


def test_the_probe_check_catches_wget_serve_and_missing_probes():
    _, worker, _ = next(t for t in long_running_containers("k8s/overlays/gpu") if "group gpu" in t[0])
    assert probe_problems(worker, True) == []
    kuberay_style = copy.deepcopy(worker)
    kuberay_style["readinessProbe"] = {"exec": {"command": ["bash", "-c", "wget -T 2 -q -O- http://localhost:52365/api/local_raylet_healthz | grep success && wget -T 2 -q -O- http://localhost:8000/-/healthz | grep success"]}}
    problems = probe_problems(kuberay_style, True)
    assert any("runs" in p for p in problems) and any(":8000" in p for p in problems)
    serve = copy.deepcopy(worker)
    serve["livenessProbe"] = {"httpGet": {"path": "/-/healthz", "port": 8000}}
    assert any(":8000" in p for p in probe_problems(serve, True))
    unset = copy.deepcopy(worker)
    del unset["readinessProbe"]
    assert probe_problems(unset, True) == [f"{worker['name']}: no readinessProbe"]


@pytest.mark.parametrize("path", KUSTOMIZATIONS)
def test_ray_probes_ask_the_dashboard_agent(path):
    """The raylet's health (and on the head the GCS's) on the dashboard agent, public with token
    auth; a startup probe gives the pod time to start before liveness counts."""
    for where, container, ray in long_running_containers(path):
        if not ray:
            continue
        for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert container[kind]["httpGet"] == {"path": "/api/healthz", "port": 52365}, (where, kind)
        startup = container["startupProbe"]
        assert startup["periodSeconds"] * startup["failureThreshold"] >= 120, where


# --- the API on the head, nothing else published -----------------------------------------------

def test_the_api_service_selects_the_head_whose_proxy_is_healthy_and_serve_runs_there_only():
    for path in SERVICE_OVERLAYS:
        docs = rendered(path)
        service = next(d for d in docs if d["kind"] == "RayService")
        serve = yaml.safe_load(service["spec"]["serveConfigV2"])
        assert serve["proxy_location"] == "HeadOnly"
        head = service["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]
        api = next(d for d in docs if d["kind"] == "Service" and d["metadata"]["name"] == "farm-api")
        selector = api["spec"]["selector"]
        kuberay_labels = {"ray.io/node-type": "head", "ray.io/serve": "true"}
        assert selector.items() <= (head["metadata"]["labels"] | kuberay_labels).items()
        assert set(kuberay_labels.items()) <= set(selector.items())
        assert [(p["port"], p["targetPort"]) for p in api["spec"]["ports"]] == [(API_PORT, "serve")]
        assert {"name": "serve", "containerPort": API_PORT} in head["spec"]["containers"][0]["ports"]


def test_the_serve_config_is_valid_for_ray_serve():
    """serveConfigV2 as Ray Serve itself reads it (the installed Ray's ServeDeploySchema)."""
    try:
        from ray.serve.schema import ServeDeploySchema
    except ImportError:
        pytest.skip("ray[serve] is not installed")
    for path in SERVICE_OVERLAYS:
        service = next(d for d in rendered(path) if d["kind"] == "RayService")
        config = ServeDeploySchema.model_validate(yaml.safe_load(service["spec"]["serveConfigV2"]))
        assert config.proxy_location.value == "HeadOnly" and config.http_options.port == API_PORT


def exposure_problems(docs: list[dict]) -> list[str]:
    """Nothing is published outside the cluster: no NodePort/LoadBalancer Service or Ingress of
    our own, no KubeRay-made Ingress or non-ClusterIP head Service."""
    problems = []
    for doc in docs:
        if doc["kind"] == "Service" and doc["spec"].get("type", "ClusterIP") != "ClusterIP":
            problems.append(f"Service {doc['metadata']['name']}: type {doc['spec']['type']}")
        if doc["kind"] in ("Ingress", "Route", "Gateway", "HTTPRoute"):
            problems.append(f"{doc['kind']} {doc['metadata']['name']}")
        spec = ray_cluster_spec(doc)
        if spec:
            head = spec["headGroupSpec"]
            if head.get("enableIngress"):
                problems.append(f"{doc['kind']} {doc['metadata']['name']}: enableIngress")
            if head.get("serviceType", "ClusterIP") != "ClusterIP":
                problems.append(f"{doc['kind']} {doc['metadata']['name']}: head serviceType {head['serviceType']}")
        if doc["kind"] == "RayService" and (doc["spec"].get("serveService") or {}).get("spec", {}).get("type", "ClusterIP") != "ClusterIP":
            problems.append("RayService serveService is not ClusterIP")
    return problems


@pytest.mark.parametrize("path", KUSTOMIZATIONS)
def test_no_service_or_ingress_publishes_the_farm(path):
    docs = rendered(path)
    assert exposure_problems(docs) == []
    bad = copy.deepcopy(docs)
    ray = next(d for d in bad if ray_cluster_spec(d) is not None)
    ray_cluster_spec(ray)["headGroupSpec"]["serviceType"] = "LoadBalancer"
    assert exposure_problems(bad)


# --- token authentication ----------------------------------------------------------------------

@pytest.mark.parametrize("path", KUSTOMIZATIONS)
def test_ray_token_authentication_is_on(path):
    for doc in rendered(path):
        spec = ray_cluster_spec(doc)
        if spec is None:
            continue
        assert spec["authOptions"]["mode"] == "token", doc["metadata"]["name"]
        assert not spec["authOptions"].get("enableK8sTokenAuth")
        if path != "k8s/overlays/cpu-dev":
            # A Secret the user creates (auth_token key), the same for the service and the job.
            assert spec["authOptions"]["secretName"] == "farm-ray-token"
        else:
            assert "secretName" not in spec["authOptions"]  # KubeRay generates the dev token


# --- NetworkPolicies ---------------------------------------------------------------------------

def selects(selector: dict | None, labels: dict) -> bool:
    if selector is None:
        return False
    if not selector.get("matchLabels", {}).items() <= labels.items():
        return False
    for expression in selector.get("matchExpressions", []):
        key, operator, values = expression["key"], expression["operator"], expression.get("values", [])
        if operator == "In" and labels.get(key) not in values:
            return False
        if operator == "NotIn" and labels.get(key) in values:
            return False
        if operator == "Exists" and key not in labels:
            return False
        if operator == "DoesNotExist" and key in labels:
            return False
    return True


def ray_pods(path: str) -> list[tuple[str, dict]]:
    """The Ray pods' labels as KubeRay creates them (the template's plus KubeRay's own)."""
    found = []
    for doc in rendered(path):
        spec = ray_cluster_spec(doc)
        if spec is None:
            continue
        head = spec["headGroupSpec"]["template"]["metadata"].get("labels", {})
        found.append(("head", head | {"ray.io/is-ray-node": "yes", "ray.io/node-type": "head", "ray.io/cluster": "farm-x1"}))
        for group in spec.get("workerGroupSpecs", []):
            labels = group["template"]["metadata"].get("labels", {})
            found.append((group["groupName"], labels | {"ray.io/is-ray-node": "yes", "ray.io/node-type": "worker", "ray.io/cluster": "farm-x1",
                                                          "ray.io/group": group["groupName"], "ray.io/serve": "true"}))
    return found


def ports_of(rule: dict) -> set:
    return {p.get("port", "any") for p in rule.get("ports", [])} or {"any"}


def ingress_problems(policies: list[dict], name: str, labels: dict, peers: dict[str, dict]) -> list[str]:
    """Which connections the policies selecting a Ray pod admit beyond the intended ones: the API
    port from anywhere; any port from the farm's own Ray pods (`peers["ray"]`, and never from
    another pod of the namespace, `peers["other"]`); the dashboard and client ports from the
    KubeRay operator's namespace; Ray's metrics from the monitoring namespace; the dashboard from
    a RayJob's submitter (`peers["submitter"]`)."""
    selecting = [p for p in policies if selects(p["spec"]["podSelector"], labels) and "Ingress" in p["spec"].get("policyTypes", ["Ingress"])]
    if not selecting:
        return [f"{name}: no NetworkPolicy selects it (everything may connect)"]
    problems = []
    for policy in selecting:
        for rule in policy["spec"].get("ingress", []):
            ports = ports_of(rule)
            where = f"{name}: {policy['metadata']['name']} admits {sorted(map(str, ports))}"
            sources = rule.get("from")
            if not sources:
                if ports != {API_PORT}:
                    problems.append(f"{where} from anywhere")
                continue
            for peer in sources:
                if "ipBlock" in peer:
                    if ports != {API_PORT}:
                        problems.append(f"{where} from {peer['ipBlock']}")
                elif "namespaceSelector" in peer:
                    namespace = peer["namespaceSelector"].get("matchLabels", {}).get("kubernetes.io/metadata.name")
                    pods = peer.get("podSelector")
                    if namespace == OPERATOR_NAMESPACE and pods == {"matchLabels": {"app.kubernetes.io/component": "kuberay-operator"}}:
                        if not ports <= {8265, 10001, API_PORT}:
                            problems.append(f"{where} from the operator")
                    elif namespace == MONITORING_NAMESPACE:
                        if not ports <= {8080, API_PORT}:
                            problems.append(f"{where} from {namespace}")
                    elif ports != {API_PORT}:
                        problems.append(f"{where} from namespaces {peer['namespaceSelector']}")
                else:  # a podSelector: pods of this namespace
                    selector = peer.get("podSelector")
                    if selects(selector, peers["other"]) and ports != {API_PORT}:
                        problems.append(f"{where} from pods that are not the farm's Ray pods ({selector})")
                    elif selects(selector, peers.get("submitter", {})) and not selects(selector, peers["ray"]):
                        if not ports <= {8265}:
                            problems.append(f"{where} from the job's submitter")
                    elif not selects(selector, peers["ray"]) and not selects(selector, peers.get("submitter", {})):
                        problems.append(f"{where} from unknown pods {selector}")
    return problems


def peer_labels(path: str) -> dict[str, dict]:
    (_, head), *_ = ray_pods(path)
    return {
        "ray": head,
        # Another pod of the farm's namespace (MinIO, a Job): part of the farm, not a Ray pod.
        "other": {"app.kubernetes.io/part-of": "farm", "app.kubernetes.io/name": "farm-minio"},
        "submitter": {"app.kubernetes.io/name": "farm-batch", "app.kubernetes.io/component": "submitter",
                      "app.kubernetes.io/part-of": "farm"} if path == "k8s/rayjob" else {},
    }


@pytest.mark.parametrize("path", KUSTOMIZATIONS)
def test_network_policies_admit_only_the_api_from_outside_the_farm(path):
    docs = rendered(path)
    policies = [d for d in docs if d["kind"] == "NetworkPolicy"]
    pods = ray_pods(path)
    assert pods
    peers = peer_labels(path)
    assert [p for name, labels in pods for p in ingress_problems(policies, name, labels, peers)] == []
    # The operator (namespace kuberay) reaches the head's dashboard, Prometheus its metrics.
    head = dict(pods)["head"]
    rules = [r for p in policies if selects(p["spec"]["podSelector"], head) for r in p["spec"].get("ingress", [])]
    operator = [r for r in rules for peer in r.get("from", []) if peer.get("namespaceSelector", {}).get("matchLabels") == {"kubernetes.io/metadata.name": OPERATOR_NAMESPACE}]
    assert operator and 8265 in ports_of(operator[0])
    assert any(8080 in ports_of(r) for r in rules for peer in r.get("from", [])
               if peer.get("namespaceSelector", {}).get("matchLabels") == {"kubernetes.io/metadata.name": MONITORING_NAMESPACE})
    from_anywhere = {port for r in rules if not r.get("from") for port in ports_of(r)}
    assert from_anywhere == ({API_PORT} if path in SERVICE_OVERLAYS else set())


def test_the_network_policy_check_catches_open_rules():
    docs = rendered("k8s/overlays/gpu")
    policies = [d for d in docs if d["kind"] == "NetworkPolicy"]
    head = dict(ray_pods("k8s/overlays/gpu"))["head"]
    peers = peer_labels("k8s/overlays/gpu")
    assert ingress_problems(policies, "head", head, peers) == []

    def with_rule(rule):
        bad = copy.deepcopy(policies)
        next(p for p in bad if p["metadata"]["name"] == "farm-ray")["spec"]["ingress"].append(rule)
        return ingress_problems(bad, "head", head, peers)

    assert with_rule({})  # every port from anywhere
    assert with_rule({"ports": [{"port": 8265}]})  # the dashboard from anywhere
    assert with_rule({"from": [{"namespaceSelector": {}}], "ports": [{"port": 6379}]})
    assert with_rule({"from": [{"podSelector": {"matchLabels": {"app.kubernetes.io/part-of": "farm"}}}]})
    assert with_rule({"from": [{"ipBlock": {"cidr": "0.0.0.0/0"}}], "ports": [{"port": 10001}]})
    assert ingress_problems([p for p in policies if p["metadata"]["name"] != "farm-ray" and p["metadata"]["name"] != "farm-default-deny"],
                            "head", head, peers)


@pytest.mark.parametrize("path", SERVICE_OVERLAYS)
def test_every_pod_of_the_namespace_is_under_a_policy(path):
    docs = rendered(path)
    policies = [d for d in docs if d["kind"] == "NetworkPolicy"]
    deny = [p for p in policies if p["spec"]["podSelector"] == {} and not p["spec"].get("ingress")]
    assert deny, "a default deny of ingress for the namespace"
    for where, template, _ in all_pod_templates(path):
        labels = template.get("metadata", {}).get("labels", {})
        assert labels.get("app.kubernetes.io/part-of") == "farm", where
    # The in-cluster services other than Ray take connections from the farm's pods only.
    for name, port in (("farm-minio", 9000), ("farm-redis", 6379)):
        policy = next((p for p in policies if p["spec"]["podSelector"] == {"matchLabels": {"app.kubernetes.io/name": name}}), None)
        if not any(d["kind"] == "Deployment" and d["metadata"]["name"] == name for d in docs):
            continue
        assert policy, name
        for rule in policy["spec"]["ingress"]:
            assert rule.get("from") and ports_of(rule) == {port}
            for peer in rule["from"]:
                assert set(peer) == {"podSelector"}, (name, peer)  # pods of this namespace only
                labels = peer["podSelector"]["matchLabels"]
                assert labels.get("app.kubernetes.io/part-of") == "farm" or labels.get("app.kubernetes.io/name") == "farm", (name, peer)


# --- storage -----------------------------------------------------------------------------------

def claims_mounted(path: str) -> list[str]:
    return [f"{where}: {v['name']}" for where, template, _ in all_pod_templates(path)
            for v in template["spec"].get("volumes", []) if "persistentVolumeClaim" in v]


def test_the_cpu_dev_overlay_needs_no_volume_claim():
    """kind's default class (rancher local-path) provides ReadWriteOnce only: cpu-dev asks for no
    claim at all (the tiny model is built into the CPU image) and mounts none."""
    docs = rendered("k8s/overlays/cpu-dev")
    assert [d["metadata"]["name"] for d in docs if d["kind"] == "PersistentVolumeClaim"] == []
    assert claims_mounted("k8s/overlays/cpu-dev") == []
    config = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "farm-config")["data"]
    assert not config["HF_HOME"].startswith("/models")  # nothing mounted there
    assert config["FARM_MODEL"] == "tiny"


def test_the_gpu_overlay_claims_a_read_write_many_volume_of_a_named_class():
    docs = rendered("k8s/overlays/gpu")
    (claim,) = [d for d in docs if d["kind"] == "PersistentVolumeClaim" and d["metadata"]["name"] == "farm-models"]
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    assert claim["spec"]["storageClassName"]  # the knob: k8s/overlays/gpu/models-storage.yaml
    knob = (ROOT / "k8s/overlays/gpu/models-storage.yaml").read_text()
    assert "storageClassName:" in knob
    for name in ("EFS", "Filestore", "Azure Files", "CephFS", "NFS", "emptyDir", "initContainer"):
        assert name in knob, f"models-storage.yaml should name {name}"
    assert claims_mounted("k8s/overlays/gpu")  # head and every GPU group mount it


def test_the_ray_job_overwrites_nothing_of_the_service_in_its_namespace():
    """k8s/rayjob is applied into namespace farm next to k8s/overlays/gpu: no object of the same
    kind and name in both (a second farm-config would replace the service's settings)."""
    def keys(path):
        return {(d["kind"], d["metadata"].get("namespace"), d["metadata"]["name"]) for d in rendered(path)}

    assert keys("k8s/rayjob") & keys("k8s/overlays/gpu") == set()


# --- committed secrets -------------------------------------------------------------------------

DEV_OVERLAY = "k8s/overlays/cpu-dev"
DEV_LITERALS = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}  # the in-cluster MinIO's dev credentials
SECRET_NAME = re.compile(r"(PASSWORD|PASSWD|TOKEN|SECRET|CREDENTIAL|API_KEY|ACCESS_KEY|PRIVATE_KEY)", re.IGNORECASE)
SECRET_ASSIGNMENT = re.compile(r"(?i)\b([\w-]*(?:password|passwd|token|secret|api[_-]?key|requirepass)[\w-]*)[\"']?(?:\s*[=:]\s*|[\"',\s]+)([^\s\"'$({}\[\],][^\s\"',\]]*)")
REFERENCE_KEYS = {"secretname", "secretkeyref", "secretref"}  # name a Secret, hold no secret


def committed_secrets(files: dict[str, str]) -> list[str]:
    """Password- or token-like literals in the k8s tree: secretGenerator literals, Secret data,
    env values and `name=value` / `name: value` text, except the dev overlay's MinIO credentials.
    References (Secret names, keys, `$(VAR)`) are not literals."""
    problems = []
    for path, text in files.items():
        dev = path.startswith(DEV_OVERLAY + "/")
        try:
            documents = [d for d in yaml.safe_load_all(text) if isinstance(d, (dict, list))]
        except yaml.YAMLError:
            documents = []
        for doc in documents:
            for generator in (doc.get("secretGenerator", []) if isinstance(doc, dict) else []):
                for literal in generator.get("literals", []):
                    key = literal.split("=", 1)[0]
                    if not (dev and key in DEV_LITERALS):
                        problems.append(f"{path}: secretGenerator literal {key}")
                if generator.get("files") or generator.get("envs"):
                    problems.append(f"{path}: secretGenerator {generator['name']} reads files")
            for node in walk(doc):
                if node.get("kind") == "Secret" and (node.get("data") or node.get("stringData")):
                    problems.append(f"{path}: Secret {node.get('metadata', {}).get('name')} with data")
                value = str(node.get("value", "")).strip()
                if "name" in node and SECRET_NAME.search(str(node["name"])) and value and not value.startswith("$("):
                    problems.append(f"{path}: env {node['name']} has a literal value")
        for number, line in enumerate(text.splitlines(), 1):
            code = line.split("#", 1)[0] if not line.lstrip().startswith("#") else ""
            for match in SECRET_ASSIGNMENT.finditer(code):
                key = match.group(1)
                if key.lower() in REFERENCE_KEYS or (dev and key in DEV_LITERALS):
                    continue
                problems.append(f"{path}:{number}: {match.group(0).strip()}")
    return problems


def walk(node):
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from walk(value)


def k8s_files() -> dict[str, str]:
    return {str(p.relative_to(ROOT)): p.read_text() for p in sorted((ROOT / "k8s").rglob("*"))
            if p.is_file() and p.suffix in (".yaml", ".yml")}


def test_no_password_or_token_is_committed():
    files = k8s_files()
    assert files
    assert committed_secrets(files) == []
    for path in KUSTOMIZATIONS:
        secrets = [d for d in rendered(path) if d["kind"] == "Secret"]
        if path == DEV_OVERLAY:
            assert [set(s["data"]) for s in secrets] == [DEV_LITERALS]
        else:
            assert secrets == []


def test_the_secret_check_catches_committed_secrets():
    redis = "secretGenerator:\n  - name: farm-redis\n    literals:\n      - password=change-me-redis\n"
    assert committed_secrets({"k8s/components/gcs-ft/kustomization.yaml": redis})
    token = "secretGenerator:\n  - name: farm-api-token\n    literals:\n      - FARM_API_TOKEN=dev-token\n"
    assert committed_secrets({"k8s/overlays/cpu-dev/kustomization.yaml": token})  # not even in dev
    env = "env:\n  - name: REDIS_PASSWORD\n    value: hunter2\n"
    assert committed_secrets({"k8s/x.yaml": env})
    assert committed_secrets({"k8s/x.yaml": 'args: ["--requirepass", "hunter2", "--appendonly", "yes"]\n'})
    assert committed_secrets({"k8s/x.yaml": 'command: ["sh", "-c", "redis-cli --password=hunter2 ping"]\n'})
    assert committed_secrets({"k8s/x.yaml": 'args: ["--requirepass", "$(REDIS_PASSWORD)"]\n'}) == []
    secret = "apiVersion: v1\nkind: Secret\nmetadata: {name: x}\nstringData: {token: abc}\n"
    assert committed_secrets({"k8s/x.yaml": secret})
    reference = "env:\n  - name: REDIS_PASSWORD\n    valueFrom: {secretKeyRef: {name: farm-redis, key: password}}\n"
    assert committed_secrets({"k8s/x.yaml": reference}) == []


def readonly_mounts(path: str) -> list[str]:
    return [m["mountPath"] for _, template, _ in all_pod_templates(path)
            for c in template["spec"].get("containers", []) for m in c.get("volumeMounts", []) if m.get("readOnly")]


@pytest.mark.parametrize("path", KUSTOMIZATIONS)
def test_the_hub_cache_is_never_on_a_read_only_mount(path):
    """uid 1000 must be able to write HF_HOME (the Hub keeps tokens and metadata there): never a
    folder under a volume the pods mount read-only (/models holds the weights, read-only)."""
    readonly = readonly_mounts(path)
    for doc in rendered(path):
        if doc["kind"] == "ConfigMap" and "HF_HOME" in doc.get("data", {}):
            home = doc["data"]["HF_HOME"]
            assert not any(home == m or home.startswith(m.rstrip("/") + "/") for m in readonly), (path, home, readonly)
