#!/usr/bin/env python3
"""Set up farm's environment and run it: `python3 dev.py demo` or `python3 dev.py test`.

Needs only python3. Creates a virtual environment in .venv (or $FARM_VENV), installs PyTorch
(the CPU build where there is no NVIDIA GPU, so no multi-GB CUDA download), then farm with its
rendering stack and test tools (`-e .[render,test]`), every package at the version in
constraints.txt (what CI tested; the images install with the same file), and runs `farm demo` or
`pytest` (for `test`, first Debian's prometheus and chromium packages where it runs as root: the
metrics and browser tests need them, and skip saying so without). Extra arguments go to that
command. Re-runs skip what is already installed.

`python3 dev.py constraints` rewrites constraints.txt from the virtual environment: an exact pin
of every package that `farm[render,test]` needs, directly or not, as installed there (after an
upgrade there: `.venv/bin/pip install -U ...`, then run it and commit the file).
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
CONSTRAINTS = ROOT / "constraints.txt"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PYTHON = BIN / "python"


def pinned(name: str, constraints: Path = CONSTRAINTS) -> str:
    """The version constraints.txt pins `name` to (`name==VERSION`)."""
    for line in constraints.read_text().splitlines():
        requirement = line.split("#", 1)[0].strip()
        if requirement.partition("==")[0].strip().lower() == name.lower() and "==" in requirement:
            return requirement.partition("==")[2].strip()
    raise SystemExit(f"{constraints} pins no {name}")


# The tested torch: the one place it is written is constraints.txt (the images check theirs
# against it at build time: deploy/docker/check_torch.py).
TORCH_VERSION = pinned("torch")
# The extras the development environment (and CI) installs.
EXTRAS = "render,test"


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
    pip = [str(PYTHON), "-m", "pip", "install", "--disable-pip-version-check", "-c", str(CONSTRAINTS)]
    if has_nvidia_gpu():
        # PyPI's Linux wheel of torch 2.13 is the CUDA 13.0 build (it needs an NVIDIA driver >= 580).
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
    digest = hashlib.sha256(
        (ROOT / "pyproject.toml").read_bytes() + CONSTRAINTS.read_bytes() + EXTRAS.encode()
    ).hexdigest()
    if stamp.exists() and stamp.read_text() == digest:
        return
    log(f"installing farm[{EXTRAS}] and its dependencies, pinned by {CONSTRAINTS.name}")
    run(
        str(PYTHON), "-m", "pip", "install", "--disable-pip-version-check",
        "-c", str(CONSTRAINTS), "-e", f"{ROOT}[{EXTRAS}]",
    )
    stamp.write_text(digest)


# Run by the virtual environment's python (it has `packaging`): every distribution that the
# project's base dependencies and the named extras need, followed through each installed
# distribution's own requirements (markers evaluated here, extras included), as `name==version`.
CLOSURE_SCRIPT = r"""
import sys, tomllib
from importlib import metadata
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name as canon

root, extras = sys.argv[1], sys.argv[2].split(",")
project = tomllib.loads(open(root + "/pyproject.toml", encoding="utf-8").read())["project"]
me, todo, taken = canon(project["name"]), [Requirement(r) for r in project["dependencies"]], set()

def take(extra):
    if extra in taken:
        return
    taken.add(extra)
    for raw in project["optional-dependencies"][extra]:
        requirement = Requirement(raw)
        if canon(requirement.name) == me:
            for inner in requirement.extras:
                take(inner)
        else:
            todo.append(requirement)

for extra in extras:
    take(extra)
versions, seen = {}, set()
while todo:
    requirement = todo.pop()
    if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
        continue
    name = canon(requirement.name)
    for extra in {""} | set(requirement.extras):
        if (name, extra) in seen:
            continue
        seen.add((name, extra))
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            sys.exit(f"{name} is required but not installed in {sys.prefix}")
        versions[name] = dist.version
        for raw in dist.requires or []:
            dependency = Requirement(raw)
            if dependency.marker is None or dependency.marker.evaluate({"extra": extra}):
                dependency.marker = None
                todo.append(dependency)
for name in sorted(versions):
    print(name + "==" + versions[name])
"""

# Left out of constraints.txt: the CUDA-only wheels that torch's CUDA build brings (torch pins
# them itself; the CPU path must never see them).
CUDA_ONLY = ("nvidia-", "cuda-", "triton")


def write_constraints() -> int:
    result = subprocess.run(
        [str(PYTHON), "-c", CLOSURE_SCRIPT, str(ROOT), EXTRAS], capture_output=True, text=True
    )
    if result.returncode != 0:
        print(result.stderr, file=sys.stderr)
        return 1
    pins = []
    for line in result.stdout.split():
        name, _, version = line.partition("==")
        if name.startswith(CUDA_ONLY):
            continue
        pins.append(f"{name}=={version.split('+')[0]}")  # torch 2.13.0+cpu: any build of 2.13.0
    header = [
        "# Exact versions of every package farm[render,test] needs, directly or not: what CI tests",
        "# (Python 3.11, CPU). Used by dev.py (`pip install -c constraints.txt -e .[render,test]`),",
        "# both images (deploy/docker) and the client install (`pip install -c constraints.txt",
        "# 'farm[client]'`). torch's CUDA-only wheels (nvidia-*, cuda-*, triton) are not listed: torch",
        "# pins them. Regenerate from the development venv with `python3 dev.py constraints`.",
    ]
    CONSTRAINTS.write_text("\n".join(header + pins) + "\n")
    log(f"wrote {len(pins)} pins to {CONSTRAINTS}")
    return 0


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


def ensure_chromium() -> None:
    """The web UI's browser tests drive a real headless Chromium (Debian's package, through
    Playwright, which is pip-installed with the test extra; its own browser download is never
    used); install it when missing. Without it those tests skip and say why."""
    if shutil.which("chromium") or os.environ.get("FARM_CHROMIUM"):
        return
    apt = shutil.which("apt-get")
    if not apt or os.geteuid() != 0:
        log("chromium is not installed and cannot be installed here; the browser tests will be skipped")
        return
    log("installing Debian's chromium package for the web UI's browser tests")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    if subprocess.run([apt, "install", "-y", "-q", "--no-install-recommends", "chromium"], env=env).returncode != 0:
        subprocess.run([apt, "update", "-q"], env=env)
        subprocess.run([apt, "install", "-y", "-q", "--no-install-recommends", "chromium"], env=env)


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("demo", "test", "setup", "constraints"):
        print(__doc__)
        print("usage: python3 dev.py demo|test|setup|constraints [arguments for farm demo / pytest]")
        return 2
    command, rest = argv[0], argv[1:]
    if command == "constraints":
        if not PYTHON.exists():
            log(f"no virtual environment in {VENV}: run `python3 dev.py setup` first")
            return 1
        return write_constraints()
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
    ensure_chromium()
    return subprocess.call([str(PYTHON), "-m", "pytest", *rest])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
