"""The deployment examples hold together: Kubernetes schemas, selectors, probes, configs.

Built-in kinds are validated against the Kubernetes OpenAPI schemas kubernetes-validate
bundles (offline). It has no schema for custom resources (the KServe InferenceService, the
Prometheus Operator's ServiceMonitor), so those are skipped there and checked structurally
here instead, and so is everything that ties the files together: selectors that select the
pods they mean to, probes on paths the gateway serves and ports it listens on, embedded
configs the gateway accepts, DNS names that name the Services that exist.

The pods are held to the `restricted` Pod Security Standard, and each gateway container is
started here the way its pod starts it: its args (`--workers 2` included) under the pod's
read-only root filesystem, with only the volumes it mounts writable.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from tests.harness import free_port
from tollway.core import config as config_mod
from tollway.gateway.app import Gateway

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "k8s"
K8S_EXAMPLES = K8S / "examples"  # optional extras, applied by hand (not in the kustomization)
COMPOSE = ROOT / "deploy" / "compose" / "docker-compose.yaml"
DEPLOY_DOC = ROOT / "docs" / "deploy.md"
READONLY_ROOT_HOOK = Path(__file__).resolve().parent / "readonly_root"
K8S_VERSION = "1.30"
CUSTOM_KINDS = {"InferenceService", "ServiceMonitor"}  # CRDs: no schema in kubernetes-validate
# The Secrets docs/deploy.md has you create by hand, with values for the tests.
SECRETS = {
    "tollway-tier1": {"TIER2_KEY": "tier2-internal-key", "OPENAI_API_KEY": "sk-example"},
    "redis-auth": {"password": "0123456789abcdef" * 4},
}
ENV = {k: v for secret in SECRETS.values() for k, v in secret.items()}  # the compose configs' ${VARS}
GATEWAY_ROUTES = set(Gateway(config_mod.loads("providers: []")).routes)
GATEWAY_PATHS = {path for method, path in GATEWAY_ROUTES if method == "GET"}
# Operations and admin: never routed from outside the cluster.
INTERNAL_PATHS = {p for _, p in GATEWAY_ROUTES if p in ("/metrics", "/readyz", "/healthz") or p.startswith("/admin/")}


def documents() -> list[dict[str, Any]]:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    docs = []
    for name in kustomization["resources"]:
        docs += [d for d in yaml.safe_load_all((K8S / name).read_text()) if d]
    return docs


DOCS = documents()
EXAMPLES = [d for f in sorted(K8S_EXAMPLES.glob("*.yaml")) for d in yaml.safe_load_all(f.read_text()) if d]


def of_kind(kind: str, docs: list[dict[str, Any]] = DOCS) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def key(doc: dict[str, Any]) -> str:
    return f"{doc['kind']}/{doc['metadata'].get('namespace', '')}/{doc['metadata']['name']}"


def test_kustomization_lists_every_manifest_file():
    listed = set(yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"])
    assert listed == {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert {d["kind"] for d in DOCS} >= {"Deployment", "Service", "ConfigMap", "HorizontalPodAutoscaler",
                                        "PodDisruptionBudget", "InferenceService"}


@pytest.mark.parametrize("doc", [d for d in DOCS + EXAMPLES if d["kind"] not in CUSTOM_KINDS], ids=key)
def test_builtin_kinds_match_the_kubernetes_schema(doc):
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_inference_service_is_a_well_formed_kserve_v1beta1_resource():
    (isvc,) = of_kind("InferenceService")
    assert isvc["apiVersion"] == "serving.kserve.io/v1beta1"
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", isvc["metadata"]["name"])
    predictor = isvc["spec"]["predictor"]
    model = predictor["model"]
    assert model["modelFormat"]["name"] == "huggingface"
    assert model["storageUri"].startswith(("hf://", "s3://", "gs://", "pvc://"))
    assert 1 <= predictor["minReplicas"] <= predictor["maxReplicas"]
    assert model["resources"]["limits"]["nvidia.com/gpu"] == model["resources"]["requests"]["nvidia.com/gpu"]
    assert isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "RawDeployment"


def _pod_labels(namespace: str) -> list[dict[str, str]]:
    labels = [d["spec"]["template"]["metadata"]["labels"] for d in of_kind("Deployment")
              if d["metadata"]["namespace"] == namespace]
    for isvc in of_kind("InferenceService"):  # the labels KServe puts on predictor pods
        if isvc["metadata"]["namespace"] == namespace:
            labels.append({"serving.kserve.io/inferenceservice": isvc["metadata"]["name"], "component": "predictor"})
    return labels


def _selects_something(selector: dict[str, str], namespace: str) -> bool:
    return any(selector.items() <= labels.items() for labels in _pod_labels(namespace))


@pytest.mark.parametrize("doc", of_kind("Service") + of_kind("PodDisruptionBudget"), ids=key)
def test_selectors_match_pods(doc):
    selector = doc["spec"]["selector"]
    selector = selector.get("matchLabels", selector)
    assert _selects_something(selector, doc["metadata"]["namespace"]), f"{key(doc)} selects no pods"


@pytest.mark.parametrize("doc", of_kind("Deployment"), ids=key)
def test_deployment_selector_matches_its_template(doc):
    assert doc["spec"]["selector"]["matchLabels"].items() <= doc["spec"]["template"]["metadata"]["labels"].items()


@pytest.mark.parametrize("doc", of_kind("HorizontalPodAutoscaler"), ids=key)
def test_hpa_scales_an_existing_deployment(doc):
    ref = doc["spec"]["scaleTargetRef"]
    names = {d["metadata"]["name"] for d in of_kind(ref["kind"]) if d["metadata"]["namespace"] == doc["metadata"]["namespace"]}
    assert ref["name"] in names


def _gateway_deployments() -> list[dict[str, Any]]:
    return [d for d in of_kind("Deployment") if d["metadata"]["labels"].get("app.kubernetes.io/name") == "tollway"]


def _arg(args: list[str], flag: str) -> str:
    return args[args.index(flag) + 1]


@pytest.mark.parametrize("doc", _gateway_deployments(), ids=key)
def test_gateway_probes_hit_real_paths_on_the_listening_port(doc):
    (container,) = doc["spec"]["template"]["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    listening = int(_arg(container["args"], "--port"))
    assert _arg(container["args"], "--host") == "0.0.0.0"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    for probe in ("readinessProbe", "livenessProbe"):
        get = container[probe]["httpGet"]
        assert get["path"] in GATEWAY_PATHS
        assert ports.get(get["port"], get["port"]) == listening


def container_env(container: dict[str, Any]) -> dict[str, str]:
    """The environment Kubernetes gives the container, from its env and envFrom (Secrets from SECRETS)."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        assert set(source) == {"secretRef"}, f"envFrom {source} is not modelled here"
        env.update(SECRETS[source["secretRef"]["name"]])
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = var["value"]
        else:
            ref = var["valueFrom"]["secretKeyRef"]
            env[var["name"]] = SECRETS[ref["name"]][ref["key"]]
    return env


def _config_map(name: str, namespace: str) -> dict[str, Any]:
    (cm,) = [c for c in of_kind("ConfigMap") if c["metadata"]["name"] == name and c["metadata"]["namespace"] == namespace]
    return cm


def _embedded_config(doc: dict[str, Any]) -> tuple[config_mod.Config, dict[str, Any]]:
    """The gateway config a Deployment mounts, checked to be where --config points, loaded with
    the environment the container gets."""
    spec = doc["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    config_path = Path(_arg(container["args"], "--config"))
    mount = next(m for m in container["volumeMounts"] if config_path.is_relative_to(m["mountPath"]))
    volume = next(v for v in spec["volumes"] if v["name"] == mount["name"])
    text = _config_map(volume["configMap"]["name"], doc["metadata"]["namespace"])["data"][config_path.name]
    return config_mod.loads(text, container_env(container)), spec


@pytest.mark.parametrize("doc", _gateway_deployments(), ids=key)
def test_mounted_config_is_valid_and_the_grace_period_covers_the_drain(doc):
    config, spec = _embedded_config(doc)
    server = config.server
    assert spec["terminationGracePeriodSeconds"] > server.drain_delay + server.drain_timeout
    assert server.drain_delay > 0, "readiness must drop before the listener closes"


def _service_dns(name: str) -> set[str]:
    found = set()
    for svc in of_kind("Service"):
        meta = svc["metadata"]
        if meta["name"] == name.split(".")[0]:
            found.add(f"{meta['name']}.{meta['namespace']}.svc.cluster.local")
    return found


def test_tier2_discovers_replicas_through_a_headless_service_on_the_right_port():
    tier2 = next(d for d in _gateway_deployments() if d["metadata"]["labels"]["app.kubernetes.io/component"] == "tier2")
    config, _ = _embedded_config(tier2)
    pools = [p for p in config.providers if p.discover]
    assert pools
    for pool in pools:
        (svc,) = [s for s in of_kind("Service") if f"{s['metadata']['name']}.{s['metadata']['namespace']}.svc.cluster.local" == pool.discover.dns]
        assert svc["spec"]["clusterIP"] == "None", "a ClusterIP would hide the replicas behind one address"
        assert pool.discover.port in {p["port"] for p in svc["spec"]["ports"]}
        assert pool.discover.path in ("/openai/v1", "/v1")  # KServe's OpenAI route or plain vLLM


def test_tier1_reaches_tier2_through_its_service():
    tier1 = next(d for d in _gateway_deployments() if d["metadata"]["labels"]["app.kubernetes.io/component"] == "tier1")
    config, spec = _embedded_config(tier1)
    tier2 = next(p for p in config.providers if p.name == "tier2")
    host = tier2.base_url.split("//")[1].split("/")[0]
    assert host in _service_dns(host), f"no Service named by {host}"
    redis_host = urlsplit(config.rate_limits.redis_url).hostname
    assert redis_host in _service_dns(redis_host)
    secret_refs = [e["secretRef"]["name"] for e in spec["containers"][0].get("envFrom", [])]
    assert secret_refs, "TIER2_KEY comes from a Secret, not from the manifest"


def test_the_example_redis_wants_the_password_tier1_sends():
    tier1 = next(d for d in _gateway_deployments() if d["metadata"]["labels"]["app.kubernetes.io/component"] == "tier1")
    config, spec = _embedded_config(tier1)
    (tier1_container,) = spec["containers"]
    raw_url = yaml.safe_load(_config_map("tollway-tier1", "tollway")["data"]["config.yaml"])["rate_limits"]["redis_url"]
    assert "${REDIS_PASSWORD}" in raw_url, "the password comes from a Secret, not from the ConfigMap"
    (redis,) = [d for d in of_kind("Deployment") if d["metadata"]["name"] == "redis"]
    (redis_container,) = redis["spec"]["template"]["spec"]["containers"]
    args = redis_container["args"]
    password_var = re.fullmatch(r"\$\((\w+)\)", _arg(args, "--requirepass")).group(1)
    assert container_env(redis_container)[password_var] == urlsplit(config.rate_limits.redis_url).password
    secret_of = {v["name"]: v["valueFrom"]["secretKeyRef"] for c in (tier1_container, redis_container)
                 for v in c.get("env", []) if "valueFrom" in v}
    assert secret_of["REDIS_PASSWORD"] == secret_of[password_var]  # one Secret, not two that must agree


def test_the_example_redis_says_it_is_an_example():
    text = (K8S / "redis.yaml").read_text()
    assert text.startswith("# EXAMPLE ONLY")
    assert "managed Redis" in text.split("apiVersion:")[0]
    (redis,) = [d for d in of_kind("Deployment") if d["metadata"]["name"] == "redis"]
    assert "EXAMPLE ONLY" in redis["metadata"]["annotations"]["description"]


def test_every_secret_the_manifests_read_is_one_the_docs_say_how_to_create():
    docs = DEPLOY_DOC.read_text()
    for doc in of_kind("Deployment"):
        for container in doc["spec"]["template"]["spec"]["containers"]:
            names = {s["secretRef"]["name"] for s in container.get("envFrom", [])}
            names |= {v["valueFrom"]["secretKeyRef"]["name"] for v in container.get("env", []) if "valueFrom" in v}
            for name in names:
                assert name in SECRETS, f"{key(doc)} reads Secret {name}, which the tests do not know"
                assert f"create secret generic {name}" in docs, f"docs/deploy.md does not say how to create Secret {name}"


# -- the restricted Pod Security Standard ---------------------------------------------------
# https://kubernetes.io/docs/concepts/security/pod-security-standards/ (the `restricted`
# profile, which includes `baseline`), for the fields these manifests could get wrong.

RESTRICTED_VOLUME_TYPES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
                           "projected", "secret"}


def pod_specs() -> list[tuple[str, dict[str, Any], list[dict[str, Any]]]]:
    """(name, pod-level spec, containers) of every pod the manifests define."""
    pods = []
    for doc in DOCS:
        if doc["kind"] == "Deployment":
            spec = doc["spec"]["template"]["spec"]
            pods.append((key(doc), spec, spec["containers"] + spec.get("initContainers", [])))
        elif doc["kind"] == "InferenceService":  # the predictor is a PodSpec, its model a Container
            predictor = doc["spec"]["predictor"]
            pods.append((key(doc), predictor, [predictor["model"], *predictor.get("containers", [])]))
    return pods


def restricted_violations(pod: dict[str, Any], containers: list[dict[str, Any]]) -> list[str]:
    """What keeps the pod from the `restricted` Pod Security Standard (empty: nothing)."""
    found = []
    pod_sc = pod.get("securityContext", {})
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(field):
            found.append(f"{field}: true")
    for volume in pod.get("volumes", []):
        kinds = set(volume) - {"name"}
        if not kinds <= RESTRICTED_VOLUME_TYPES:
            found.append(f"volume {volume['name']} is {sorted(kinds)}")
    pod_seccomp = pod_sc.get("seccompProfile", {}).get("type")
    if pod_seccomp not in (None, "RuntimeDefault", "Localhost"):
        found.append(f"pod seccompProfile {pod_seccomp}")
    if pod_sc.get("runAsUser") == 0:
        found.append("pod runAsUser: 0")
    for c in containers:
        sc, name = c.get("securityContext", {}), c.get("name", "kserve-container")  # KServe's name for the model
        if sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) is not True:
            found.append(f"{name}: runAsNonRoot is not true")
        if sc.get("runAsUser") == 0:
            found.append(f"{name}: runAsUser: 0")
        if sc.get("seccompProfile", {}).get("type", pod_seccomp) not in ("RuntimeDefault", "Localhost"):
            found.append(f"{name}: no seccompProfile RuntimeDefault (or Localhost)")
        if sc.get("allowPrivilegeEscalation") is not False:
            found.append(f"{name}: allowPrivilegeEscalation is not false")
        if sc.get("privileged"):
            found.append(f"{name}: privileged")
        caps = sc.get("capabilities", {})
        if "ALL" not in caps.get("drop", []):
            found.append(f"{name}: capabilities do not drop ALL")
        if set(caps.get("add", [])) - {"NET_BIND_SERVICE"}:
            found.append(f"{name}: adds capabilities {caps['add']}")
        if any("hostPort" in p for p in c.get("ports", [])):
            found.append(f"{name}: hostPort")
    return found


@pytest.mark.parametrize(("name", "pod", "containers"), pod_specs(), ids=[p[0] for p in pod_specs()])
def test_every_pod_meets_the_restricted_pod_security_standard(name, pod, containers):
    assert restricted_violations(pod, containers) == []


def test_the_restricted_check_catches_what_it_is_for():
    good_pod = {"securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}}
    good = {"name": "c", "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}}
    assert restricted_violations(good_pod, [good]) == []
    assert restricted_violations({}, [good]) == ["c: runAsNonRoot is not true",
                                                 "c: no seccompProfile RuntimeDefault (or Localhost)"]
    assert restricted_violations(good_pod, [{"name": "c"}]) == ["c: allowPrivilegeEscalation is not false",
                                                                "c: capabilities do not drop ALL"]
    assert restricted_violations({**good_pod, "volumes": [{"name": "h", "hostPath": {"path": "/"}}]}, [good])


def test_the_gateway_namespace_enforces_the_restricted_standard():
    namespaces = {d["metadata"]["name"]: d["metadata"].get("labels", {}) for d in of_kind("Namespace")}
    for doc in of_kind("Deployment"):
        labels = namespaces[doc["metadata"]["namespace"]]
        assert labels.get("pod-security.kubernetes.io/enforce") == "restricted", doc["metadata"]["namespace"]


@pytest.mark.parametrize("doc", of_kind("Deployment"), ids=key)
def test_containers_have_read_only_roots_and_tolerant_readiness_probes(doc):
    for container in doc["spec"]["template"]["spec"]["containers"]:
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        # Kubernetes' defaults (1 s, 3 failures) and anything stricter flap a pod that is busy,
        # not broken; see the comment on the probes in tier1.yaml.
        ready = container["readinessProbe"]
        assert ready.get("timeoutSeconds", 1) >= 2
        assert ready.get("failureThreshold", 3) >= 3
        live = container.get("livenessProbe")
        if live:  # a restart is worse than a pause in traffic: liveness gives up last
            assert live.get("timeoutSeconds", 1) >= ready.get("timeoutSeconds", 1)
            window = (live.get("periodSeconds", 10) * live.get("failureThreshold", 3))
            assert window > ready.get("periodSeconds", 10) * ready.get("failureThreshold", 3)


# -- the gateway's container, run as its pod runs it ------------------------------------------

def _image_entrypoint() -> list[str]:
    runtime = re.split(r"^FROM\s+", (ROOT / "Dockerfile").read_text(), flags=re.M)[-1]
    return json.loads(re.search(r"^ENTRYPOINT\s+(\[.*\])\s*$", runtime, re.M).group(1))


class PodProcess:
    """A Deployment's gateway container, started on this machine the way its pod starts it.

    The container's filesystem is rebuilt under `root`: every volume mount becomes a directory
    there (a ConfigMap's keys as files, an emptyDir empty), and paths into the mounts in the
    container's args and env are pointed at those directories. The working directory is
    `root` itself (the image sets none, so the pod's is `/`).

    With readOnlyRootFilesystem, tests/readonly_root (an audit hook in every Python process of
    the gateway) fails every write outside the writable mounts with EROFS, as the kernel does
    in the pod, and reports it on stderr. `writable_mounts=False` leaves those mounts out, to
    show that the check can fail.

    The command is the image's ENTRYPOINT (`tollway`, run here as `python -m
    tollway.gateway.cli`) with the container's args; only --host and --port are changed, to
    listen on a free loopback port. TMPDIR, TEMP, TMP and PROMETHEUS_MULTIPROC_DIR from this
    machine are dropped, HOME is the image user's (/nonexistent), and the environment is
    the container's (its Secrets from SECRETS).
    """

    def __init__(self, doc: dict[str, Any], root: Path, writable_mounts: bool = True) -> None:
        spec = doc["spec"]["template"]["spec"]
        (container,) = spec["containers"]
        self.root = root
        self.locations: dict[str, Path] = {}  # mountPath in the container -> directory here
        writable: list[str] = []
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for mount in container.get("volumeMounts", []):
            assert "subPath" not in mount, "subPath mounts are not modelled here"
            volume = volumes[mount["name"]]
            if "emptyDir" in volume and not mount.get("readOnly"):
                if not writable_mounts:
                    continue
                writable += [mount["mountPath"]]
            local = root / mount["mountPath"].lstrip("/")
            local.mkdir(parents=True, exist_ok=True)
            if "configMap" in volume:
                data = _config_map(volume["configMap"]["name"], doc["metadata"]["namespace"])["data"]
                for name, text in data.items():
                    (local / name).write_text(text)
            elif "emptyDir" not in volume:
                pytest.fail(f"volume {mount['name']}: only configMap and emptyDir volumes are modelled here")
            self.locations[mount["mountPath"]] = local
        assert (container.get("command") or _image_entrypoint()) == ["tollway"]
        args = [self.local_path(a) for a in container["args"]]
        self.port = free_port()
        args[args.index("--host") + 1] = "127.0.0.1"
        args[args.index("--port") + 1] = str(self.port)
        self.url = f"http://127.0.0.1:{self.port}"

        env = {k: v for k, v in os.environ.items() if k not in ("TMPDIR", "TEMP", "TMP", "PROMETHEUS_MULTIPROC_DIR")}
        env.update({k: self.local_path(v) for k, v in container_env(container).items()})
        env["HOME"] = "/nonexistent"  # the image's `tollway` user (useradd --home-dir /nonexistent)
        env["PYTHONPATH"] = os.pathsep.join([str(READONLY_ROOT_HOOK), env.get("PYTHONPATH", "")])
        # The image's modules were compiled when pip installed them; here the interpreter would
        # try to write .pyc files next to this checkout's sources, which is not the pod's doing.
        env["PYTHONDONTWRITEBYTECODE"] = "1"
        if container["securityContext"].get("readOnlyRootFilesystem"):
            # Writable: the emptyDirs, where the args and env now point, and their paths in the
            # container, which a program may also write to by name (e.g. /tmp without TMPDIR).
            env["TOLLWAY_WRITABLE_PATHS"] = os.pathsep.join([str(self.locations[m]) for m in writable] + writable)

        self.stdout_path, self.stderr_path = root.parent / "stdout.log", root.parent / "stderr.log"
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen([sys.executable, "-m", "tollway.gateway.cli", *args], cwd=root, env=env,
                                         stdout=out, stderr=err, start_new_session=True)

    def local_path(self, value: str) -> str:
        """`value`, pointed at this machine's copy of the mount it names, if it names one."""
        for mount_path, local in self.locations.items():
            if value == mount_path or value.startswith(mount_path.rstrip("/") + "/"):
                return str(local / value[len(mount_path):].lstrip("/"))
        return value

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def get(self, path: str) -> int:
        try:
            with urllib.request.urlopen(self.url + path, timeout=2) as r:
                return r.status
        except urllib.error.HTTPError as exc:
            return exc.code

    def wait_ready(self, timeout: float = 30.0) -> bool:
        """True once /readyz answers 200; False if the process exits first or time runs out."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                if self.get("/readyz") == 200:
                    return True
            except OSError:
                pass
            time.sleep(0.1)
        return False

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)  # the drain is tested elsewhere (test_drain.py)
        self.proc.wait(10)


@pytest.fixture
def pod_process(tmp_path):
    started: list[PodProcess] = []

    def start(doc: dict[str, Any], writable_mounts: bool = True) -> PodProcess:
        pod = PodProcess(doc, tmp_path / f"pod{len(started)}" / "root", writable_mounts)
        started.append(pod)
        return pod

    yield start
    for pod in started:
        pod.stop()


@pytest.mark.parametrize("doc", _gateway_deployments(), ids=key)
def test_the_container_starts_and_is_ready_under_the_pods_filesystem_constraints(doc, pod_process):
    (container,) = doc["spec"]["template"]["spec"]["containers"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert int(_arg(container["args"], "--workers")) > 1  # the mode that needs a writable directory
    pod = pod_process(doc)
    assert pod.wait_ready(), f"exit code {pod.proc.poll()}:\n{pod.stderr()}"
    assert pod.get("/v1/models") == 401  # a request through a worker, counted in the shared metrics
    assert pod.get("/metrics") == 200
    tmp = pod.locations["/tmp"]
    assert list(tmp.glob("tollway-metrics-*")), "the workers' metrics directory is in the emptyDir"
    assert "DENIED" not in pod.stderr(), pod.stderr()  # nothing tried to write anywhere else


@pytest.mark.parametrize("doc", _gateway_deployments(), ids=key)
def test_without_its_writable_volumes_the_container_fails_at_start(doc, pod_process):
    """The check above can fail: the same container without its emptyDirs is the shipped bug."""
    pod = pod_process(doc, writable_mounts=False)
    assert not pod.wait_ready()
    assert pod.proc.wait(10) == 1
    assert "DENIED write to /tmp/" in pod.stderr()
    assert "none is writable" in pod.stderr() and "TMPDIR" in pod.stderr()


# -- optional examples: ServiceMonitor, Ingress ---------------------------------------------

def test_every_file_under_deploy_k8s_is_described_in_the_docs():
    docs = DEPLOY_DOC.read_text()
    for path in sorted(K8S.rglob("*.yaml")):
        assert str(path.relative_to(K8S)) in docs, f"docs/deploy.md does not mention {path.relative_to(K8S)}"


def test_service_monitor_scrapes_the_gateway_services_on_their_metrics_port():
    (monitor,) = of_kind("ServiceMonitor", EXAMPLES)
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    spec = monitor["spec"]
    namespaces = spec["namespaceSelector"]["matchNames"]
    selected = [s for s in of_kind("Service") if s["metadata"]["namespace"] in namespaces
                and spec["selector"]["matchLabels"].items() <= s["metadata"].get("labels", {}).items()]
    tiers = {s["metadata"]["labels"]["app.kubernetes.io/component"] for s in selected}
    assert tiers == {"tier1", "tier2"}
    for label in spec.get("targetLabels", []):
        assert all(label in s["metadata"]["labels"] for s in selected)
    for endpoint in spec["endpoints"]:
        assert endpoint["path"] == "/metrics" and "/metrics" in GATEWAY_PATHS
        for svc in selected:
            port = next(p for p in svc["spec"]["ports"] if p["name"] == endpoint["port"])
            pods = [d for d in _gateway_deployments() if svc["spec"]["selector"].items()
                    <= d["spec"]["template"]["metadata"]["labels"].items()]
            for deployment in pods:
                (container,) = deployment["spec"]["template"]["spec"]["containers"]
                target = {p["name"]: p["containerPort"] for p in container["ports"]}[port["targetPort"]]
                assert target == int(_arg(container["args"], "--port"))


def test_ingress_serves_tier1_client_apis_over_tls_and_nothing_internal():
    (ingress,) = of_kind("Ingress", EXAMPLES)
    spec = ingress["spec"]
    hosts = {rule["host"] for rule in spec["rules"]}
    assert hosts <= {h for tls in spec["tls"] for h in tls["hosts"]}, "every host is served over TLS"
    assert all(tls["secretName"] for tls in spec["tls"])
    paths = [p for rule in spec["rules"] for p in rule["http"]["paths"]]
    services = {s["metadata"]["name"]: s for s in of_kind("Service") if s["metadata"]["namespace"] == ingress["metadata"]["namespace"]}
    for path in paths:
        backend = path["backend"]["service"]
        assert backend["name"] == "tollway-tier1"
        assert backend["port"]["name"] in {p["name"] for p in services[backend["name"]]["spec"]["ports"]}
        assert path["pathType"] == "Prefix"

    def routed(route: str) -> bool:
        return any(route == p["path"] or route.startswith(p["path"].rstrip("/") + "/") for p in paths)

    assert not [r for r in INTERNAL_PATHS if routed(r)]
    assert {path for _, path in GATEWAY_ROUTES} - INTERNAL_PATHS == {path for _, path in GATEWAY_ROUTES if routed(path)}


# -- docker compose ------------------------------------------------------------------------

COMPOSE_DOC = yaml.safe_load(COMPOSE.read_text())
SERVICES = COMPOSE_DOC["services"]


def _compose_config(service: str) -> config_mod.Config:
    svc = SERVICES[service]
    host_dir, container_dir = svc["volumes"][0].split(":")[:2]
    config_path = _arg(svc["command"], "--config")
    local = (COMPOSE.parent / host_dir / Path(config_path).relative_to(container_dir)).resolve()
    return config_mod.load(str(local), ENV)


def test_compose_has_both_tiers_redis_and_two_replicas():
    assert {"tier1", "tier2", "redis", "vllm-a", "vllm-b"} <= set(SERVICES)
    build = SERVICES["tier1"]["build"]
    dockerfile = COMPOSE.parent / build["context"] / build.get("dockerfile", "Dockerfile")
    assert dockerfile.is_file()
    stages = re.findall(r"^FROM\s+\S+\s+AS\s+(\S+)", dockerfile.read_text(), re.M | re.I)
    assert build["target"] in stages and SERVICES["vllm-a"]["build"]["target"] in stages


def test_compose_configs_point_at_compose_services_and_ports():
    tier1, tier2 = _compose_config("tier1"), _compose_config("tier2")
    for provider in tier1.providers + tier2.providers:
        for url in [provider.base_url] if provider.base_url else provider.endpoints or []:
            host, port = url.split("//")[1].split("/")[0].split(":")
            assert host in SERVICES, f"{provider.name} points at {host}, which compose does not run"
            svc = SERVICES[host]
            listens = _arg(svc["command"], "--port")
            assert listens == port
    assert tier1.rate_limits.backend == "redis" and "//redis:" in tier1.rate_limits.redis_url


def test_compose_grace_and_health_checks_fit_the_gateway():
    for name in ("tier1", "tier2"):
        config = _compose_config(name)
        grace = int(SERVICES[name]["stop_grace_period"].rstrip("s"))
        assert grace > config.server.drain_delay + config.server.drain_timeout
        check = " ".join(SERVICES[name]["healthcheck"]["test"])
        assert "/readyz" in check and f":{_arg(SERVICES[name]['command'], '--port')}/" in check
    dockerfile = (COMPOSE.parent / SERVICES["vllm-a"]["build"]["context"] / "Dockerfile").read_text()
    fakes_stage = dockerfile.split("AS fakes", 1)[1].split("\nFROM ", 1)[0]
    assert "tests.fakes.vllm_replica" in fakes_stage  # the replicas' image runs the fake vLLM
