"""The operator configuration (farm/settings.py): one model, read once, documented completely."""

import re
from pathlib import Path

import pytest

from farm.settings import (
    FarmSettings,
    SettingsError,
    all_variables,
    configuration_markdown,
    load_settings,
)

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "configuration.md"
NAMED = re.compile(r"\bFARM_[A-Z0-9_]*[A-Z0-9]\b")  # FARM_S3_* style prefixes end in "_": not names


def test_the_configuration_document_is_generated_from_the_settings():
    assert DOC.read_text() == configuration_markdown(), (
        "docs/configuration.md is stale: run `python -m farm.settings > docs/configuration.md`"
    )


def test_every_farm_variable_the_code_names_is_a_documented_setting():
    documented = set(re.findall(r"`(FARM_[A-Z0-9_]+)`", DOC.read_text()))
    named = {}
    for path in (ROOT / "farm").rglob("*.py"):
        for name in NAMED.findall(path.read_text()):
            named.setdefault(name, str(path.relative_to(ROOT)))
    missing = {name: where for name, where in named.items() if name not in documented}
    assert not missing, f"FARM_* names in the code but not in docs/configuration.md (add them to farm/settings.py): {missing}"
    assert documented == all_variables()


def test_settings_come_from_the_mapping_given_and_nowhere_else(monkeypatch):
    monkeypatch.setenv("FARM_CPU_WORKERS", "7")
    assert load_settings({}).engine.cpu_workers == 1
    assert load_settings().engine.cpu_workers == 7
    settings = load_settings({"FARM_CPU_WORKERS": "3", "FARM_S3_MAX_ATTEMPTS": "9", "FARM_API_TOKEN": "t",
                              "FARM_URL_ALLOW_HTTP": "true", "FARM_PRECISION": "FP16", "FARM_MODEL": "tiny"})
    assert (settings.engine.cpu_workers, settings.storage.max_attempts, settings.url.allow_http) == (3, 9, True)
    assert settings.api.token == settings.client.token == "t"
    assert settings.workers.precision == "fp16" and settings.model_ref == "tiny" and settings.api.model == "tiny"
    assert load_settings({}).model_ref == "ali-vilab/i2vgen-xl"


def test_relative_paths_are_made_absolute_where_they_are_read(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    settings = load_settings({"FARM_TIERS_FILE": "tiers.yaml", "FARM_STATE_URI": "state",
                              "FARM_DEFAULT_OUTPUT": "s3://bucket/out", "FARM_API_LOCAL_BASE": "images"})
    assert settings.tiers_file == str(tmp_path / "tiers.yaml")
    assert settings.coordinator.state_uri == str(tmp_path / "state")
    assert settings.default_output == settings.api.default_output == "s3://bucket/out"
    assert settings.api.local_base == str(tmp_path / "images")
    moved = settings.with_output("out").with_model("tiny")
    assert moved.default_output == moved.api.default_output == str(tmp_path / "out") and moved.api.model == "tiny"


@pytest.mark.parametrize("variable, value", [
    ("FARM_CPU_WORKERS", "zero"), ("FARM_CPU_WORKERS", "0"), ("FARM_GPU_VRAM_GB", "-4"),
    ("FARM_PRECISION", "fp8"), ("FARM_S3_MAX_ATTEMPTS", "99"), ("FARM_URL_ALLOW_HTTP", "perhaps"),
    ("FARM_API_MAX_STREAMS", "0"), ("FARM_MAX_MANIFEST_BYTES", "lots"),
])
def test_an_invalid_value_names_the_variable_and_the_value(variable, value):
    with pytest.raises(SettingsError) as raised:
        load_settings({variable: value})
    message = str(raised.value)
    assert f"{variable}={value!r}" in message and "docs/configuration.md" in message


def test_an_invalid_setting_is_exit_2_with_the_message(monkeypatch, capsys):
    from farm.cli import main

    monkeypatch.setenv("FARM_CPU_WORKERS", "many")
    assert main(["tiers"]) == 2
    assert "FARM_CPU_WORKERS='many'" in capsys.readouterr().err


def test_settings_survive_the_trip_to_a_ray_actor():
    import pickle

    settings = load_settings({"FARM_MODEL": "tiny", "FARM_S3_UPLOAD_QUEUE": "5"})
    again = pickle.loads(pickle.dumps(settings))
    assert isinstance(again, FarmSettings) and again == settings and again.storage.upload_queue == 5
