"""The deploy checks' tools (.venv-deploy, `make deploy-tools`) and the rendered Kubernetes overlays."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
OVERLAYS = ("cpu-demo", "gpu")


@dataclass(frozen=True)
class Tools:
    bin: Path

    def path(self, name: str) -> Path:
        return self.bin / name

    def run(self, name: str, *args: str | Path, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
        """Runs a tool; its exit code is the caller's to assert (with the output in the message)."""
        command = [str(self.path(name)), *map(str, args)]
        return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=600)


def output(proc: subprocess.CompletedProcess[str]) -> str:
    return f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"


@pytest.fixture(scope="session")
def tools() -> Tools:
    bin_dir = Path(os.environ.get("PANDASERVE_DEPLOY_TOOLS", REPO / ".venv-deploy" / "bin"))
    if not (bin_dir / "kubectl").exists():
        message = f"the deploy tools are not installed in {bin_dir}: run `make deploy-tools`"
        if os.environ.get("CI"):
            pytest.fail(message)  # `make test` installs them: missing in CI is a failure
        pytest.skip(message)
    return Tools(bin_dir)


@dataclass(frozen=True)
class Rendered:
    overlay: str
    path: Path
    docs: list[dict[str, Any]]

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [d for d in self.docs if d["kind"] == kind]

    def get(self, kind: str, name: str) -> dict[str, Any]:
        found = [d for d in self.of_kind(kind) if d["metadata"]["name"] == name]
        assert len(found) == 1, f"{self.overlay}: expected one {kind} {name}, found {len(found)}"
        return found[0]


@pytest.fixture(scope="session")
def rendered(tools: Tools, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Rendered]:
    """Each overlay rendered by kustomize (`kubectl kustomize`), written to a file and parsed."""
    out = tmp_path_factory.mktemp("rendered")
    result = {}
    for overlay in OVERLAYS:
        proc = tools.run("kubectl", "kustomize", REPO / "deploy" / "k8s" / "overlays" / overlay)
        assert proc.returncode == 0, f"kustomize {overlay}: {output(proc)}"
        path = out / f"{overlay}.yaml"
        path.write_text(proc.stdout)
        result[overlay] = Rendered(overlay, path, [d for d in yaml.safe_load_all(proc.stdout) if d])
    return result
