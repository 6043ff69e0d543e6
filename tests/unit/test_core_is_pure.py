"""farm.core must import without torch, ray, boto3, diffusers or transformers."""

import subprocess
import sys


def test_core_imports_no_heavy_libraries():
    code = (
        "import sys\n"
        "import farm.core.manifest, farm.core.job, farm.core.params, farm.core.ids, farm.core.errors\n"
        "heavy = [m for m in ('torch', 'ray', 'boto3', 'diffusers', 'transformers', 'PIL') if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == ""


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
