"""HF_HUB_OFFLINE as huggingface_hub reads it (its own parsing, any case of 1/ON/YES/TRUE, and
TRANSFORMERS_OFFLINE), at call time; the missing-weights message names `hf download`."""

import sys
import types

import pytest
from huggingface_hub import constants

from farm.core.errors import ModelUnavailableError
from farm.models import loading


@pytest.fixture
def hub_online_at_import(monkeypatch):
    """The Hub as if imported without offline mode (the suite's conftest sets HF_HUB_OFFLINE=1)."""
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)


@pytest.mark.parametrize("value, offline", [
    ("1", True), ("true", True), ("YES", True), ("on", True), ("True", True),
    ("0", False), ("", False), ("false", False), ("no", False), ("2", False),
])
def test_hf_hub_offline_values_as_the_hub_treats_them(monkeypatch, hub_online_at_import, value, offline):
    monkeypatch.setenv("HF_HUB_OFFLINE", value)
    assert loading.hub_offline() is offline
    assert constants._is_true(value) is offline  # the Hub's own rule agrees


def test_unset_is_online_and_transformers_offline_counts(monkeypatch, hub_online_at_import):
    assert loading.hub_offline() is False
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "on")
    assert loading.hub_offline() is True


def test_offline_when_the_hub_was_imported_offline(monkeypatch, hub_online_at_import):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # it then refuses every request
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    assert loading.hub_offline() is True


@pytest.mark.parametrize("value, local_only", [("On", True), ("yes", True), ("0", False)])
def test_the_download_asks_for_local_files_only_when_offline(monkeypatch, hub_online_at_import, value, local_only):
    monkeypatch.setenv("HF_HUB_OFFLINE", value)
    asked = []

    class Pipeline:
        @staticmethod
        def download(repo_id, variant=None, local_files_only=False):
            asked.append(local_files_only)
            raise OSError("not cached")

    monkeypatch.setitem(sys.modules, "diffusers", types.SimpleNamespace(DiffusionPipeline=Pipeline))
    with pytest.raises(ModelUnavailableError) as caught:
        loading._download("ali-vilab/i2vgen-xl", "fp16")
    assert asked == [local_only, local_only]
    message = str(caught.value)
    assert "`hf download ali-vilab/i2vgen-xl --local-dir DIR`" in message and "huggingface-cli" not in message
    assert ("HF_HUB_OFFLINE is set" in message) is local_only
