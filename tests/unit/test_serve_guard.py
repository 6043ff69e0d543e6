"""`farm serve` refuses to publish an API without a token: a host beyond loopback needs
FARM_API_TOKEN (or an explicit FARM_API_ALLOW_ANONYMOUS). Checked before Ray starts."""

import subprocess
import sys

import pytest

FARM = [sys.executable, "-m", "farm"]


def serve(*args: str, **env: str) -> subprocess.CompletedProcess:
    import os

    environment = {k: v for k, v in os.environ.items() if not k.startswith("FARM_API_")}
    return subprocess.run([*FARM, "serve", *args], capture_output=True, text=True, timeout=60, env={**environment, **env})


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.1.2.3", "farm.example.com"])
def test_publishing_without_a_token_is_refused_before_anything_starts(host):
    result = serve("--host", host, "--port", "1")
    assert result.returncode == 2, result.stderr
    assert f"--host {host}" in result.stderr and "FARM_API_TOKEN" in result.stderr
    assert "Traceback" not in result.stderr


def test_the_guard_knows_loopback_hosts():
    from farm.cli.local import _is_loopback

    assert all(_is_loopback(h) for h in ("127.0.0.1", "127.0.0.2", "::1", "localhost"))
    assert not any(_is_loopback(h) for h in ("0.0.0.0", "::", "192.168.1.4", "example.com"))
