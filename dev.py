#!/usr/bin/env python3
"""Set up farm's environment and run it: `python3 dev.py demo` or `python3 dev.py test`.

Needs only python3. Creates a virtual environment in .venv (or $FARM_VENV), installs PyTorch
(the CPU build where there is no NVIDIA GPU, so no multi-GB CUDA download), then farm and its
test tools, and runs `farm demo` or `pytest`. Extra arguments go to that command. Re-runs skip
what is already installed.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = Path(os.environ.get("FARM_VENV", ROOT / ".venv"))
TORCH_VERSION = "2.13.0"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PYTHON = BIN / "python"


def log(message: str) -> None:
    print(f"[dev] {message}", flush=True)


def run(*args: str, check: bool = True) -> int:
    return subprocess.run(list(args), check=check).returncode


def has_nvidia_gpu() -> bool:
    smi = shutil.which("nvidia-smi")
    if not smi:
        return False
    try:
        result = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return result.returncode == 0 and "GPU" in result.stdout


def ensure_venv() -> None:
    if PYTHON.exists():
        return
    log(f"creating a virtual environment in {VENV}")
    venv.EnvBuilder(with_pip=True).create(VENV)


def installed_torch() -> str | None:
    result = subprocess.run(
        [str(PYTHON), "-c", "import torch; print(torch.__version__)"], capture_output=True, text=True
    )
    return result.stdout.strip() if result.returncode == 0 else None


def ensure_torch() -> None:
    version = installed_torch()
    if version and version.split("+")[0] == TORCH_VERSION:
        return
    pip = [str(PYTHON), "-m", "pip", "install", "--disable-pip-version-check"]
    if has_nvidia_gpu():
        log(f"NVIDIA GPU found: installing torch {TORCH_VERSION} (CUDA build)")
        run(*pip, f"torch=={TORCH_VERSION}")
        return
    log(f"no NVIDIA GPU: installing the CPU build of torch {TORCH_VERSION}")
    # A local or mirrored CPU wheel first (tagged +cpu); else PyTorch's CPU index.
    if run(*pip, f"torch=={TORCH_VERSION}+cpu", check=False) == 0:
        return
    run(
        *pip,
        f"torch=={TORCH_VERSION}",
        "--index-url",
        "https://download.pytorch.org/whl/cpu",
        "--extra-index-url",
        "https://pypi.org/simple",
    )


def ensure_project() -> None:
    stamp = VENV / ".farm-installed"
    digest = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if stamp.exists() and stamp.read_text() == digest:
        return
    log("installing farm and its dependencies")
    run(str(PYTHON), "-m", "pip", "install", "--disable-pip-version-check", "-e", f"{ROOT}[test]")
    stamp.write_text(digest)


def ensure_prometheus() -> None:
    """The metrics tests run a real Prometheus (Debian's package); install it when missing."""
    if shutil.which("prometheus") and shutil.which("promtool"):
        return
    apt = shutil.which("apt-get")
    if not apt or os.geteuid() != 0:
        log("prometheus is not installed and cannot be installed here; its tests will be skipped")
        return
    log("installing Debian's prometheus package for the metrics tests")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    if subprocess.run([apt, "install", "-y", "-q", "--no-install-recommends", "prometheus"], env=env).returncode != 0:
        subprocess.run([apt, "update", "-q"], env=env)
        subprocess.run([apt, "install", "-y", "-q", "--no-install-recommends", "prometheus"], env=env)


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("demo", "test", "setup"):
        print(__doc__)
        print("usage: python3 dev.py demo|test|setup [arguments for farm demo / pytest]")
        return 2
    command, rest = argv[0], argv[1:]
    ensure_venv()
    ensure_torch()
    ensure_project()
    if command == "setup":
        log(f"ready: activate with `source {BIN / 'activate'}`")
        return 0
    os.chdir(ROOT)
    if command == "demo":
        return subprocess.call([str(BIN / "farm"), "demo", *rest])
    ensure_prometheus()
    return subprocess.call([str(PYTHON), "-m", "pytest", *rest])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
