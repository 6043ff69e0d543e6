"""Unit tests run without Ray: `ray.init` raises, so a test that would start a cluster fails at
once and belongs in tests/integration instead. (Subprocesses a test starts are not patched.)"""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _no_ray(monkeypatch):
    try:
        import ray
    except ImportError:  # nothing to guard
        return

    def refuse(*args, **kwargs):
        raise RuntimeError(
            "unit tests run without Ray: this test called ray.init; move it to tests/integration "
            "(and use the ray_cluster or gpu_cluster fixture)"
        )

    monkeypatch.setattr(ray, "init", refuse)
