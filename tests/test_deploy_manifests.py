"""The deployment examples hold together: Kubernetes schemas, selectors, probes, configs.

Built-in kinds are validated against the Kubernetes OpenAPI schemas kubernetes-validate
bundles (offline). The KServe InferenceService is a CRD it has no schema for, so it is
checked structurally, and so is everything that ties the files together: selectors that
select the pods they mean to, probes on paths the gateway serves and ports it listens on,
embedded configs the gateway accepts, DNS names that name the Services that exist.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from tollway.core import config as config_mod
from tollway.gateway.app import Gateway

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "k8s"
COMPOSE = ROOT / "deploy" / "compose" / "docker-compose.yaml"
K8S_VERSION = "1.30"
ENV = {"TIER2_KEY": "tier2-internal-key", "OPENAI_API_KEY": "sk-example"}
GATEWAY_PATHS = {path for method, path in Gateway(config_mod.loads("providers: []")).routes if method == "GET"}


def documents() -> list[dict[str, Any]]:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    docs = []
    for name in kustomization["resources"]:
        docs += [d for d in yaml.safe_load_all((K8S / name).read_text()) if d]
    return docs


DOCS = documents()


def of_kind(kind: str) -> list[dict[str, Any]]:
    return [d for d in DOCS if d["kind"] == kind]


def key(doc: dict[str, Any]) -> str:
    return f"{doc['kind']}/{doc['metadata'].get('namespace', '')}/{doc['metadata']['name']}"


def test_kustomization_lists_every_manifest_file():
    listed = set(yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"])
    assert listed == {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert {d["kind"] for d in DOCS} >= {"Deployment", "Service", "ConfigMap", "HorizontalPodAutoscaler",
                                        "PodDisruptionBudget", "InferenceService"}


@pytest.mark.parametrize("doc", [d for d in DOCS if d["kind"] != "InferenceService"], ids=key)
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


def _embedded_config(doc: dict[str, Any]) -> tuple[config_mod.Config, dict[str, Any]]:
    """The gateway config a Deployment mounts, checked to be where --config points."""
    spec = doc["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    config_path = Path(_arg(container["args"], "--config"))
    mount = next(m for m in container["volumeMounts"] if config_path.is_relative_to(m["mountPath"]))
    volume = next(v for v in spec["volumes"] if v["name"] == mount["name"])
    (cm,) = [c for c in of_kind("ConfigMap") if c["metadata"]["name"] == volume["configMap"]["name"]]
    text = cm["data"][config_path.name]
    return config_mod.loads(text, ENV), spec


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
    redis_host = config.rate_limits.redis_url.split("//")[1].split(":")[0]
    assert redis_host in _service_dns(redis_host)
    secret_refs = [e["secretRef"]["name"] for e in spec["containers"][0].get("envFrom", [])]
    assert secret_refs, "TIER2_KEY comes from a Secret, not from the manifest"


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
