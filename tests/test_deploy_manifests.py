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

import functools
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
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
from tollway.gateway.lifecycle.drain import DrainLimits

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "k8s"
K8S_EXAMPLES = K8S / "examples"  # optional extras, applied by hand (not in the kustomization)
COMPOSE = ROOT / "deploy" / "compose" / "docker-compose.yaml"
DEPLOY_DOC = ROOT / "docs" / "deploy.md"
READONLY_ROOT_HOOK = Path(__file__).resolve().parent / "readonly_root"
K8S_VERSION = "1.30"
CUSTOM_KINDS = {"InferenceService", "ServiceMonitor"}  # CRDs: no schema in kubernetes-validate
# The Secrets docs/deploy.md has you create by hand, with values for the tests (made the way
# the docs make them: tollway-database's URL holds postgres-auth's password).
PG_PASSWORD = "fedcba9876543210" * 4
SECRETS = {
    "tollway-tier1": {"TIER2_KEY": "tier2-internal-key", "OPENAI_API_KEY": "sk-example"},
    "redis-auth": {"password": "0123456789abcdef" * 4},
    "postgres-auth": {"password": PG_PASSWORD},
    "tollway-database": {"url": f"postgresql://tollway:{PG_PASSWORD}@postgres.tollway.svc.cluster.local:5432/tollway"},
}
ENV = {k: v for secret in SECRETS.values() for k, v in secret.items()}  # the compose configs' ${VARS}
GATEWAY_ROUTES = set(Gateway(config_mod.loads("providers: []")).routes)
GATEWAY_PATHS = {path for method, path in GATEWAY_ROUTES if method == "GET"}
# Operations and admin: never routed from outside the cluster.
INTERNAL_PATHS = {p for _, p in GATEWAY_ROUTES if p in ("/metrics", "/readyz", "/healthz", "/ui") or p.startswith("/admin/")}


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


def workloads() -> list[dict[str, Any]]:
    """The Deployments and StatefulSets (the example PostgreSQL): everything with a pod template."""
    return of_kind("Deployment") + of_kind("StatefulSet")


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
    labels = [d["spec"]["template"]["metadata"]["labels"] for d in workloads()
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


@pytest.mark.parametrize("doc", workloads(), ids=key)
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
    # and the shutdown's flushes after the drain (usage records, spans): granian's kill comes first
    assert spec["terminationGracePeriodSeconds"] >= server.drain_delay + DrainLimits.of(server).kill_after
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


def _tier1() -> dict[str, Any]:
    return next(d for d in _gateway_deployments() if d["metadata"]["labels"]["app.kubernetes.io/component"] == "tier1")


def _postgres() -> tuple[dict[str, Any], dict[str, Any]]:
    (postgres,) = [d for d in of_kind("StatefulSet") if d["metadata"]["name"] == "postgres"]
    (container,) = postgres["spec"]["template"]["spec"]["containers"]
    return postgres, container


def test_the_example_postgres_says_it_is_an_example():
    text = (K8S / "postgres.yaml").read_text()
    assert text.startswith("# EXAMPLE ONLY")
    head = text.split("apiVersion:")[0]
    assert "managed PostgreSQL" in head and "sslmode=require" in head and "kustomization.yaml" in head
    assert "create secret generic postgres-auth" in head
    postgres, _ = _postgres()
    assert "EXAMPLE ONLY" in postgres["metadata"]["annotations"]["description"]
    for doc in [d for d in yaml.safe_load_all(text) if d]:  # the Service too: whatever it creates is marked
        assert doc["metadata"]["labels"]["app.kubernetes.io/part-of"] == "tollway-example", key(doc)
    assert postgres["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/part-of"] == "tollway-example"


def test_the_example_postgres_keeps_its_data_and_asks_for_a_password():
    postgres, container = _postgres()
    spec = postgres["spec"]
    assert spec["replicas"] == 1
    assert re.fullmatch(r"postgres:\d+", container["image"]), "the official image, pinned to a major version"
    env = {v["name"]: v for v in container["env"]}
    assert env["POSTGRES_PASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": "postgres-auth", "key": "password"}
    assert "POSTGRES_HOST_AUTH_METHOD" not in env, "no trust authentication"
    # The data directory is inside the claim, one level down (a fresh volume may hold lost+found).
    (claim,) = spec["volumeClaimTemplates"]
    data_mount = next(m for m in container["volumeMounts"] if m["name"] == claim["metadata"]["name"])
    assert Path(env["PGDATA"]["value"]).parent == Path(data_mount["mountPath"])
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    # Read-only root: the socket directory and /tmp are the image's other writable places.
    volumes = {v["name"]: v for v in spec["template"]["spec"]["volumes"]}
    writable = {m["mountPath"] for m in container["volumeMounts"] if "emptyDir" in volumes.get(m["name"], {})}
    assert writable == {"/var/run/postgresql", "/tmp"}
    pod_sc = spec["template"]["spec"]["securityContext"]
    assert (pod_sc["runAsUser"], pod_sc["fsGroup"]) == (999, 999), "the official image's postgres user"
    # Ready only when the real server answers over TCP, as the user and database tier one uses.
    probe = container["readinessProbe"]["exec"]["command"]
    assert probe[0] == "pg_isready" and _arg(probe, "--host") == "127.0.0.1"
    assert (_arg(probe, "--username"), _arg(probe, "--dbname")) == (env["POSTGRES_USER"]["value"], env["POSTGRES_DB"]["value"])
    (service,) = [s for s in of_kind("Service") if s["metadata"]["name"] == spec["serviceName"]]
    assert service["spec"]["clusterIP"] == "None", "a StatefulSet's governing Service is headless"


def test_tier1_keeps_its_ledger_in_postgres_with_the_url_from_a_secret():
    config, spec = _embedded_config(_tier1())
    (tier1_container,) = spec["containers"]
    raw_store = yaml.safe_load(_config_map("tollway-tier1", "tollway")["data"]["config.yaml"])["store"]
    assert raw_store == {"backend": "postgres", "url": "${DATABASE_URL}"}, "the URL (and password) is not in the ConfigMap"
    database_url = next(v for v in tier1_container["env"] if v["name"] == "DATABASE_URL")
    assert database_url["valueFrom"]["secretKeyRef"] == {"name": "tollway-database", "key": "url"}
    assert config.store is not None and config.store.backend == "postgres" and config.ledger.enabled
    # The URL the docs have you put in tollway-database reaches the example PostgreSQL, as the
    # user, with the password and the database it was created with.
    url = urlsplit(config.store.url)
    assert url.scheme == "postgresql"
    assert url.hostname in _service_dns(url.hostname), f"no Service named by {url.hostname}"
    (service,) = [s for s in of_kind("Service") if s["metadata"]["name"] == url.hostname.split(".")[0]]
    assert url.port in {p["port"] for p in service["spec"]["ports"]}
    postgres, pg_container = _postgres()
    assert service["spec"]["selector"].items() <= postgres["spec"]["template"]["metadata"]["labels"].items()
    pg_env = container_env(pg_container)
    assert (url.username, url.password, url.path) == (pg_env["POSTGRES_USER"], pg_env["POSTGRES_PASSWORD"],
                                                      "/" + pg_env["POSTGRES_DB"])


def test_the_docs_make_the_database_url_from_the_postgres_password():
    """Two Secrets that must agree: every place that says how to create them makes both from one
    shell variable, and the URL names the example's Service, user and database."""
    for path in (DEPLOY_DOC, K8S / "tier1.yaml", K8S / "postgres.yaml"):
        text = path.read_text()
        password = re.search(r'create secret generic postgres-auth --from-literal=password="\$(\w+)"', text)
        assert password, path
        url = re.search(r'create secret generic tollway-database \\\n\W*--from-literal=url="([^"]+)"', text)
        assert url, path
        expected = SECRETS["tollway-database"]["url"].replace(PG_PASSWORD, "$" + password.group(1))
        assert url.group(1) == expected, path


def _gateway_config_maps() -> list[tuple[str, str]]:
    return [(f"{cm['metadata']['name']}/{name}", text) for cm in of_kind("ConfigMap")
            if cm["metadata"]["labels"].get("app.kubernetes.io/name") == "tollway" for name, text in cm["data"].items()]


@pytest.mark.parametrize(("name", "text"), _gateway_config_maps(), ids=[n for n, _ in _gateway_config_maps()])
def test_tollway_check_accepts_each_config_map_with_and_without_its_secrets(name, text, tmp_path):
    """`tollway check`, as an operator runs it: in the pod (the container's environment) and on a
    machine without the Secrets (--allow-missing-env, which names what it could not check)."""
    (doc,) = [d for d in _gateway_deployments() if d["metadata"]["name"] == name.split("/")[0]]
    (container,) = doc["spec"]["template"]["spec"]["containers"]
    path = tmp_path / "config.yaml"
    path.write_text(text)
    secret_vars = set(container_env(container)) - {"TMPDIR"}
    bare = {k: v for k, v in os.environ.items() if k not in secret_vars}
    cli = [sys.executable, "-m", "tollway.gateway.cli", "check"]
    in_pod = subprocess.run([*cli, str(path)], capture_output=True, text=True, timeout=60,
                            env={**bare, **container_env(container)})
    assert in_pod.returncode == 0 and "ok (" in in_pod.stdout, in_pod.stderr
    outside = subprocess.run([*cli, "--allow-missing-env", str(path)], capture_output=True, text=True, timeout=60, env=bare)
    assert outside.returncode == 0 and "ok (" in outside.stdout, outside.stderr
    for var in re.findall(r"\$\{(\w+)\}", text):
        assert var in outside.stderr, f"--allow-missing-env does not name {var}"


def test_every_secret_the_manifests_read_is_one_the_docs_say_how_to_create():
    docs = DEPLOY_DOC.read_text()
    for doc in workloads():
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
        if doc["kind"] in ("Deployment", "StatefulSet"):
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
    for doc in workloads():
        labels = namespaces[doc["metadata"]["namespace"]]
        assert labels.get("pod-security.kubernetes.io/enforce") == "restricted", doc["metadata"]["namespace"]


@pytest.mark.parametrize("doc", workloads(), ids=key)
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


def _image_env() -> dict[str, str]:
    """The runtime stage's `ENV K=V` lines."""
    runtime = re.split(r"^FROM\s+", (ROOT / "Dockerfile").read_text(), flags=re.M)[-1]
    return dict(m.groups() for m in re.finditer(r"^ENV\s+(\w+)=(\S+)\s*$", runtime, re.M))


@functools.cache
def _image_price_cache() -> Path:
    """What the image's `RUN python -m tollway.gateway.price_source --build` makes (once a session),
    here: outside the pod's writable mounts, so a worker may read it and write nothing there."""
    folder = Path(tempfile.mkdtemp(prefix="tollway-image-")) / "usr-local-share-tollway"
    subprocess.run([sys.executable, "-m", "tollway.gateway.price_source", "--build"], check=True, capture_output=True,
                   env={**os.environ, "TOLLWAY_CACHE_DIR": str(folder)})
    return folder


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

    def __init__(self, doc: dict[str, Any], root: Path, writable_mounts: bool = True,
                 env_overrides: dict[str, str] | None = None) -> None:
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
        env.update(_image_env())  # the image's, under the container's own
        if "TOLLWAY_CACHE_DIR" in env:  # the price table the image built, where this machine has it
            env["TOLLWAY_CACHE_DIR"] = str(_image_price_cache())
        env.update({k: self.local_path(v) for k, v in {**container_env(container), **(env_overrides or {})}.items()})
        self.env = env
        self.args = args
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

    def start(doc: dict[str, Any], writable_mounts: bool = True, env: dict[str, str] | None = None) -> PodProcess:
        pod = PodProcess(doc, tmp_path / f"pod{len(started)}" / "root", writable_mounts, env)
        started.append(pod)
        return pod

    yield start
    for pod in started:
        pod.stop()


@pytest.mark.parametrize("doc", _gateway_deployments(), ids=key)
def test_the_container_starts_and_is_ready_under_the_pods_filesystem_constraints(doc, pod_process):
    (container,) = doc["spec"]["template"]["spec"]["containers"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    workers = int(_arg(container["args"], "--workers"))
    assert workers > 1  # the mode that needs a writable directory
    pod = pod_process(doc)
    assert pod.wait_ready(), f"exit code {pod.proc.poll()}:\n{pod.stderr()}"
    assert pod.get("/v1/models") == 401  # a request through a worker, counted in the shared metrics
    assert pod.get("/metrics") == 200
    tmp = pod.locations["/tmp"]
    assert list(tmp.glob("tollway-metrics-*")), "the workers' metrics directory is in the emptyDir"
    assert "DENIED" not in pod.stderr(), pod.stderr()  # nothing tried to write anywhere else
    # the workers read the price table the image built (and wrote nothing: DENIED above); ready
    # is one worker's answer, so the other may still be starting on a loaded machine
    deadline = time.monotonic() + 20
    while pod.stderr().count(f"read from {_image_price_cache()}") < workers and time.monotonic() < deadline:
        time.sleep(0.1)
    assert pod.stderr().count(f"read from {_image_price_cache()}") == workers, pod.stderr()
    assert "DENIED" not in pod.stderr(), pod.stderr()


@pytest.mark.parametrize("doc", _gateway_deployments(), ids=key)
def test_without_its_writable_volumes_the_container_fails_at_start(doc, pod_process):
    """The check above can fail: the same container without its emptyDirs is the shipped bug."""
    pod = pod_process(doc, writable_mounts=False)
    assert not pod.wait_ready()
    assert pod.proc.wait(10) == 1
    assert "DENIED write to /tmp/" in pod.stderr()
    assert "none is writable" in pod.stderr() and "TMPDIR" in pod.stderr()


@pytest.fixture
def postgres_instance():
    from tests.pg_instance import PgInstance, pg_bin

    bin_dir = pg_bin()
    if bin_dir is None:
        pytest.skip("PostgreSQL is not installed (initdb, pg_ctl)")
    with PgInstance(bin_dir) as pg:
        yield pg


def test_tier1_writes_its_ledger_to_postgres_under_the_pods_filesystem_constraints(pod_process, postgres_instance):
    """Tier one's pod, with the example's database swapped for one of the test's own: the ledger
    (asyncpg, its pool, the migrations) writes nothing outside the pod's volumes, and `tollway
    usage` run in the pod, with the same config and environment, reads what the pod wrote."""
    pod = pod_process(_tier1(), env={"DATABASE_URL": postgres_instance.url})
    assert pod.wait_ready(), f"exit code {pod.proc.poll()}:\n{pod.stderr()}"
    # The demo key; tier two's Service does not resolve here, so the request fails upstream:
    # a failed request is recorded like any other.
    request = urllib.request.Request(pod.url + "/v1/chat/completions", method="POST",
                                     data=json.dumps({"model": "llama-3-8b", "messages": [{"role": "user", "content": "hi"}]}).encode(),
                                     headers={"authorization": "Bearer tollway-demo-key", "content-type": "application/json"})
    try:
        urllib.request.urlopen(request, timeout=30)
    except urllib.error.HTTPError as exc:
        assert exc.code >= 500
    usage = [sys.executable, "-m", "tollway.gateway.cli", "usage", "--config", _arg(pod.args, "--config"),
             "--by", "key,model", "--since", "1h", "--format", "json"]
    deadline = time.monotonic() + 15
    while True:
        done = subprocess.run(usage, capture_output=True, text=True, timeout=60, cwd=pod.root, env=pod.env)
        assert done.returncode == 0, done.stderr
        rows = json.loads(done.stdout)["data"]
        if rows or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert [(r["key"], r["model"], r["requests"], r["errors"]) for r in rows] == [("demo", "llama-3-8b", 1, 1)]
    assert "DENIED" not in pod.stderr() + done.stderr, pod.stderr() + done.stderr
    assert "not available at start" not in pod.stderr(), pod.stderr()


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


def _compose_env(service: str) -> dict[str, str]:
    """The service's environment as `docker compose up` sets it with nothing exported: each
    ${VAR:-default} at its default."""
    env = SERVICES[service].get("environment", {})
    assert isinstance(env, dict), "environment as a mapping"
    return {k: re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", str(v)) for k, v in env.items()}


def _compose_config(service: str) -> config_mod.Config:
    svc = SERVICES[service]
    host_dir, container_dir = svc["volumes"][0].split(":")[:2]
    config_path = _arg(svc["command"], "--config")
    local = (COMPOSE.parent / host_dir / Path(config_path).relative_to(container_dir)).resolve()
    return config_mod.load(str(local), {**ENV, **_compose_env(service)})


def test_compose_has_both_tiers_redis_postgres_and_two_replicas():
    assert {"tier1", "tier2", "redis", "postgres", "vllm-a", "vllm-b"} <= set(SERVICES)
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


def test_compose_tier1_keeps_its_ledger_in_the_compose_postgres():
    config = _compose_config("tier1")
    assert config.store is not None and config.store.backend == "postgres"
    url = urlsplit(config.store.url)
    postgres = SERVICES["postgres"]
    assert url.hostname == "postgres" and url.port == 5432
    assert re.fullmatch(r"postgres:\d+", postgres["image"])
    pg_env = _compose_env("postgres")
    assert (url.username, url.password, url.path) == (pg_env["POSTGRES_USER"], pg_env["POSTGRES_PASSWORD"],
                                                      "/" + pg_env["POSTGRES_DB"])
    # One variable sets both ends, and its default says what it is.
    assert postgres["environment"]["POSTGRES_PASSWORD"] == "${POSTGRES_PASSWORD:-change-me}"
    assert "${POSTGRES_PASSWORD:-change-me}" in SERVICES["tier1"]["environment"]["DATABASE_URL"]
    # tier1 starts once PostgreSQL answers over TCP (not the socket-only server of its first start).
    assert SERVICES["tier1"]["depends_on"]["postgres"] == {"condition": "service_healthy"}
    check = postgres["healthcheck"]["test"]
    assert check[:2] == ["CMD", "pg_isready"] and _arg(check, "--host") == "127.0.0.1"
    assert (_arg(check, "--username"), _arg(check, "--dbname")) == (pg_env["POSTGRES_USER"], pg_env["POSTGRES_DB"])
    volume = next(v for v in postgres["volumes"] if v.endswith(":/var/lib/postgresql/data"))
    assert volume.split(":")[0] in COMPOSE_DOC["volumes"], "a named volume: the data outlives the container"


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
