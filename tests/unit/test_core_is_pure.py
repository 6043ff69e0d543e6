"""farm.core must import without torch, ray, boto3, diffusers, transformers or PIL, and read no
settings itself. Every module of the package is checked (found with pkgutil), so a new module in
farm/core is covered without touching this file."""

import importlib.util
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import farm.core

HEAVY = ("torch", "ray", "boto3", "diffusers", "transformers", "PIL")


def core_modules() -> list[str]:
    """farm.core and every module and subpackage under it."""
    found = pkgutil.walk_packages(farm.core.__path__, prefix="farm.core.")
    return ["farm.core", *sorted(module.name for module in found)]


def test_the_walk_finds_the_core_modules():
    """A guard on the guard: the walk sees the package's modules (not an empty list)."""
    modules = core_modules()
    assert {"farm.core.manifest", "farm.core.params", "farm.core.job", "farm.core.ids", "farm.core.errors"} <= set(modules)
    files = {path.stem for path in Path(farm.core.__file__).parent.glob("*.py")} - {"__init__"}
    assert files <= {name.rsplit(".", 1)[-1] for name in modules}


@pytest.mark.parametrize("module", core_modules())
def test_core_imports_no_heavy_libraries(module):
    """Each module in a fresh interpreter, so one module's imports cannot hide another's."""
    code = (
        "import sys\n"
        f"import {module}\n"
        f"heavy = [m for m in {HEAVY!r} if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "", f"importing {module} loads {result.stdout.strip()}"


def test_core_reads_no_environment_variables():
    """Settings come from farm.settings; farm.core gets values passed in and never reads os.environ."""
    readers = []
    for module in core_modules():
        origin = importlib.util.find_spec(module).origin
        if "os.environ" in Path(origin).read_text(encoding="utf-8"):
            readers.append(module)
    assert readers == [], f"these farm.core modules mention os.environ: {', '.join(readers)}"


def test_validate_command_imports_no_heavy_libraries(tmp_path):
    manifest = tmp_path / "m.json"
    manifest.write_text('{"version": 1, "items": [{"image": "a.png", "prompt": "p"}]}')
    code = (
        "import sys\n"
        "from farm.cli import main\n"
        f"code = main(['validate', {str(manifest)!r}])\n"
        "heavy = [m for m in ('torch', 'ray', 'boto3', 'diffusers', 'transformers') if m in sys.modules]\n"
        "print('HEAVY=' + ','.join(heavy))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "HEAVY=\n" in result.stdout + "\n"
