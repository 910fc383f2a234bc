"""What the rendered overlays, the compose file and the monitoring config must hold, beyond what the
validators check: probes and limits everywhere, the trust boundary, GPUs, autoscaling, keys from a
Secret, and names that agree with the code (settings, metrics, ports)."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
import yaml

from service.metrics import Metrics
from service.settings import Settings
from tests.deploy.conftest import REPO, Rendered

pytestmark = pytest.mark.deploy

WORKLOADS = {"api", "encoder", "router", "engine"}
METRICS_NS = {"kubernetes.io/metadata.name": "monitoring"}


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    return workload["spec"]["template"]["spec"]


def workloads(r: Rendered) -> list[dict[str, Any]]:
    return r.of_kind("Deployment") + r.of_kind("StatefulSet")


def container(r: Rendered, deployment: str, name: str | None = None) -> dict[str, Any]:
    containers = pod_spec(r.get("Deployment", deployment))["containers"]
    return next(c for c in containers if name is None or c["name"] == name)


def test_each_overlay_has_every_part(rendered: dict[str, Rendered]) -> None:
    for r in rendered.values():
        assert {d["metadata"]["name"] for d in r.of_kind("Deployment")} == WORKLOADS
        assert [s["metadata"]["name"] for s in r.of_kind("StatefulSet")] == ["redis"]
        assert {s["metadata"]["name"] for s in r.of_kind("Service")} == WORKLOADS | {"redis"}
        assert {h["spec"]["scaleTargetRef"]["name"] for h in r.of_kind("HorizontalPodAutoscaler")} == {"api", "encoder"}
        assert {p["metadata"]["name"] for p in r.of_kind("PodDisruptionBudget")} == WORKLOADS
        assert {n["metadata"]["name"] for n in r.of_kind("NetworkPolicy")} >= WORKLOADS | {"redis"}
        assert (
            r.get("Namespace", "pandaserve")["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
        )
        assert all(d["metadata"].get("namespace") == "pandaserve" for d in r.docs if d["kind"] != "Namespace")


def test_every_container_has_probes_limits_and_a_locked_down_context(rendered: dict[str, Rendered]) -> None:
    for r in rendered.values():
        for w in workloads(r):
            spec = pod_spec(w)
            where = f"{r.overlay} {w['metadata']['name']}"
            assert spec["securityContext"]["runAsNonRoot"] is True, where
            assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", where
            for c in spec["containers"] + spec.get("initContainers", []):
                ctx = c["securityContext"]
                assert ctx["allowPrivilegeEscalation"] is False and ctx["readOnlyRootFilesystem"] is True, where
                assert ctx["capabilities"]["drop"] == ["ALL"], where
                for bound in ("requests", "limits"):
                    assert {"cpu", "memory"} <= set(c["resources"][bound]), f"{where} {c['name']} {bound}"
            for c in spec["containers"]:
                assert "readinessProbe" in c and "livenessProbe" in c, f"{where} {c['name']}"
                if w["metadata"]["name"] in WORKLOADS:
                    # Model loads take minutes: the startup probe allows at least 15 of them.
                    probe = c["startupProbe"]
                    assert probe["periodSeconds"] * probe["failureThreshold"] >= 900, where


def test_gpu_overlay_requests_gpus_and_the_demo_none(rendered: dict[str, Rendered]) -> None:
    gpu = rendered["gpu"]
    for deployment, name in (("engine", "vllm"), ("encoder", "encoder")):
        resources = container(gpu, deployment, name)["resources"]
        assert resources["limits"]["nvidia.com/gpu"] == 1 and resources["requests"]["nvidia.com/gpu"] == 1
        assert any(t["key"] == "nvidia.com/gpu" for t in pod_spec(gpu.get("Deployment", deployment))["tolerations"])
    assert container(gpu, "engine", "vllm")["image"].startswith("vllm/vllm-openai:")
    demo = rendered["cpu-demo"]
    assert "nvidia.com/gpu" not in json.dumps(demo.docs)
    assert container(demo, "engine", "vllm")["image"] == "pandaserve:0.1.0-cpu"


def test_engine_runs_the_command_pandaserve_prints(rendered: dict[str, Rendered]) -> None:
    for r, device in ((rendered["gpu"], "cuda"), (rendered["cpu-demo"], "cpu")):
        spec = pod_spec(r.get("Deployment", "engine"))
        init = spec["initContainers"][0]
        assert "pandaserve engine command --bundle /bundle" in " ".join(init["args"])
        assert {e["name"]: e["value"] for e in init["env"]}["ENGINE_DEVICE"] == device
        vllm = container(r, "engine", "vllm")
        assert vllm["args"] == ['eval "exec env $$(cat /run/pandaserve/engine-command)"']
        assert vllm["ports"][0]["containerPort"] == 8000 and vllm["startupProbe"]["httpGet"]["path"] == "/health"


def ingress_sources(r: Rendered, name: str) -> list[dict[str, Any]]:
    return [peer for rule in r.get("NetworkPolicy", name)["spec"]["ingress"] for peer in rule.get("from", [])]


def app_sources(peers: list[dict[str, Any]]) -> set[str]:
    """The pods of this namespace a policy admits (Prometheus, in its own namespace, aside)."""
    names = set()
    for peer in peers:
        if peer.get("namespaceSelector", {}).get("matchLabels") == METRICS_NS:
            assert peer["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "prometheus"}
            continue
        assert set(peer) == {"podSelector"}, peer  # no ipBlock, no other namespace
        names.add(peer["podSelector"]["matchLabels"]["app.kubernetes.io/name"])
    return names


def test_network_policies_draw_the_trust_boundary(rendered: dict[str, Rendered]) -> None:
    for r in rendered.values():
        deny = r.get("NetworkPolicy", "default-deny-ingress")["spec"]
        assert deny["podSelector"] == {} and deny["policyTypes"] == ["Ingress"] and "ingress" not in deny
        assert app_sources(ingress_sources(r, "encoder")) == {"api"}
        assert app_sources(ingress_sources(r, "router")) == {"api"}
        assert app_sources(ingress_sources(r, "engine")) == {"router"}
        assert app_sources(ingress_sources(r, "redis")) == {"api", "encoder"}
        assert r.get("NetworkPolicy", "api")["spec"]["ingress"] == [{"ports": [{"port": "http"}]}]


def test_api_keys_come_from_a_secret_as_a_file(rendered: dict[str, Rendered]) -> None:
    for r in rendered.values():
        api = container(r, "api")
        env = {e["name"]: e.get("value") for e in api["env"]}
        assert "PANDASERVE_API_KEYS" not in env
        mount = next(m for m in api["volumeMounts"] if m["name"] == "api-keys")
        assert env["PANDASERVE_API_KEYS_FILE"].startswith(mount["mountPath"] + "/") and mount["readOnly"]
        volume = next(v for v in pod_spec(r.get("Deployment", "api"))["volumes"] if v["name"] == "api-keys")
        assert volume["secret"]["secretName"].startswith("pandaserve-api-keys")
    # The demo brings its placeholder Secret (name suffixed with a content hash); gpu expects yours.
    assert [s["metadata"]["name"] for s in rendered["cpu-demo"].of_kind("Secret")][0].startswith("pandaserve-api-keys-")
    assert not rendered["gpu"].of_kind("Secret")


def test_autoscalers_scale_on_requests_in_flight(rendered: dict[str, Rendered]) -> None:
    for r in rendered.values():
        for hpa in r.of_kind("HorizontalPodAutoscaler"):
            pods = [m["pods"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"]
            assert [p["metric"]["name"] for p in pods] == ["pandaserve_requests_in_flight"]
            assert hpa["spec"]["minReplicas"] >= 1


def test_env_names_are_settings(rendered: dict[str, Rendered]) -> None:
    """Every PANDASERVE_* variable the manifests and compose set is a field of service.settings."""
    fields = {f"PANDASERVE_{name.upper()}" for name in Settings.model_fields}
    names = set()
    for r in rendered.values():
        for w in workloads(r):
            for c in pod_spec(w)["containers"] + pod_spec(w).get("initContainers", []):
                names |= {e["name"] for e in c.get("env", [])}
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    for service in compose["services"].values():
        names |= set(service.get("environment", {}))
    used = {n for n in names if n.startswith("PANDASERVE_")}
    assert len(used) > 5 and used <= fields, used - fields


def metric_names() -> set[str]:
    """The sample names the service exports (counters as *_total, histograms as *_bucket/_sum/_count)."""
    names = set()
    for family in Metrics().registry.collect():
        names.add(family.name)
        suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"]}.get(family.type, [""])
        names |= {family.name + s for s in suffixes}
    return names


def test_dashboards_and_alerts_name_real_metrics() -> None:
    exported = metric_names()
    texts = [
        (REPO / "deploy/grafana/dashboards/pandaserve.json").read_text(),
        (REPO / "deploy/prometheus/alerts.yml").read_text(),
    ]
    used = {m for text in texts for m in re.findall(r"\bpandaserve_[a-z0-9_]+", text)}
    assert len(used) >= 10 and used <= exported, used - exported
    dashboard = json.loads(texts[0])
    titles = " ".join(p["title"].lower() for p in dashboard["panels"])
    for needed in ("request rate", "first token", "inter-token", "end-to-end", "queue", "batch", "cache hit", "4xx"):
        assert needed in titles, needed
    assert "vllm:kv_cache_usage_perc" in texts[0] and "vllm:num_requests_waiting" in texts[0]


def test_prometheus_rule_equals_the_compose_rules(rendered: dict[str, Rendered]) -> None:
    groups = yaml.safe_load((REPO / "deploy/prometheus/alerts.yml").read_text())["groups"]
    assert sum(len(g["rules"]) for g in groups) >= 6
    for r in rendered.values():
        assert r.get("PrometheusRule", "pandaserve")["spec"]["groups"] == groups


def test_scrapes_cover_every_part(rendered: dict[str, Rendered]) -> None:
    prometheus = yaml.safe_load((REPO / "deploy/prometheus/prometheus.yml").read_text())
    assert {j["job_name"] for j in prometheus["scrape_configs"]} == WORKLOADS
    for r in rendered.values():
        monitors = r.of_kind("ServiceMonitor")
        covered = set()
        for m in monitors:
            selector = m["spec"]["selector"]
            covered |= set(selector.get("matchLabels", {}).values())
            covered |= {v for e in selector.get("matchExpressions", []) for v in e["values"]}
        assert covered == WORKLOADS


def test_compose_topology() -> None:
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    services = compose["services"]
    assert services["redis"]["command"][:3] == ["redis-server", "--appendonly", "yes"]
    for api in ("api-1", "api-2"):
        env = services[api]["environment"]
        assert env["PANDASERVE_ENGINE_URL"] == "http://router:8000" and env["REDIS_URL"].startswith("redis://redis:")
        assert env["PANDASERVE_ENCODER_URL"] == "http://encoder:8000"
    assert "pandaserve engine command --bundle /bundle" in services["engine"]["command"][0]
    # Only the API and the monitoring UIs are published; the rest sit on the internal network.
    published = {name for name, s in services.items() if s.get("ports")}
    assert published == {"api-1", "api-2", "prometheus", "grafana"}
    assert compose["networks"]["backend"]["internal"] is True
    for name in ("engine", "router", "encoder", "redis"):
        assert services[name]["networks"] == ["backend"], name


def test_only_the_router_talks_to_the_kubernetes_api(rendered: dict[str, Rendered]) -> None:
    """Service discovery needs the router's token and a read-only Role on pods; no other pod mounts one."""
    for r in rendered.values():
        for w in workloads(r):
            mounted = pod_spec(w).get("automountServiceAccountToken")
            assert mounted is (w["metadata"]["name"] == "router"), w["metadata"]["name"]
        role = r.get("Role", "router-discovery")
        assert role["rules"] == [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}]
        subjects = r.get("RoleBinding", "router-discovery")["subjects"]
        assert subjects == [{"kind": "ServiceAccount", "name": "router", "namespace": "pandaserve"}]
        assert not r.of_kind("ClusterRole") and not r.of_kind("ClusterRoleBinding")
