"""The service renders only the models its operator lists (FARM_MODEL, FARM_EXTRA_MODELS)."""

from types import SimpleNamespace

import pytest

from farm.core.errors import FarmError
from farm.runtime.coordinator import Coordinator
from farm.settings import FarmSettings
from tests.unit.test_dispatch import item, spec_of


def check(settings, items, **header):
    Coordinator._check_models(SimpleNamespace(settings=settings), spec_of(items, **header))


def test_extra_models_are_read_as_a_list_and_the_farm_model_comes_first(monkeypatch):
    monkeypatch.setenv("FARM_EXTRA_MODELS", "tiny:wan, tiny:ltx")
    settings = FarmSettings(model="tiny")
    assert settings.allowed_models == ["tiny", "tiny:wan", "tiny:ltx"]
    monkeypatch.setenv("FARM_EXTRA_MODELS", '["tiny:svd"]')
    assert FarmSettings(model="tiny").allowed_models == ["tiny", "tiny:svd"]


def test_a_job_or_item_naming_a_model_not_listed_is_refused_with_the_list():
    settings = FarmSettings(model="tiny", extra_models=["tiny:wan"])
    check(settings, [item("a"), item("b", frames=9, model="tiny:wan")])  # allowed: nothing raised
    with pytest.raises(FarmError) as caught:
        check(settings, [item("a"), item("b", frames=9, model="tiny:ltx")])
    message = str(caught.value)
    assert "'tiny:ltx'" in message and "'tiny', 'tiny:wan'" in message and "FARM_EXTRA_MODELS" in message
    with pytest.raises(FarmError, match="/etc/weights"):
        check(settings, [item("a")], model="/etc/weights")
