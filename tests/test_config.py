"""Run config: YAML loading, CLI overrides, and clear errors for unknown keys / bad values."""

from pathlib import Path

import pytest

import domainssl.methods  # noqa: F401  (registers the methods and view presets)
from domainssl.config import load_config, parse_duration
from domainssl.errors import DomainSSLError
from domainssl.views.settings import CropViewsConfig


def test_shipped_default_loads() -> None:
    config = load_config("eo", "simclr")
    assert config.method.name == "simclr"
    assert config.domain == "eo"


def test_overrides_and_set_apply_in_order() -> None:
    config = load_config(
        "eo",
        "byol",
        overrides={"trainer.epochs": 3, "data.path": "x"},
        sets=["views.crop_scale=[0.3, 0.9]", "trainer.epochs=5"],
    )
    assert config.method.name == "byol"
    assert config.trainer.epochs == 5
    assert isinstance(config.views, CropViewsConfig)
    assert config.views.crop_scale == (0.3, 0.9)
    assert config.data.path == "x"


def test_unknown_key_lists_valid_keys() -> None:
    with pytest.raises(DomainSSLError) as err:
        load_config("eo", "simclr", sets=["views.crop_sise=32"])
    message = str(err.value)
    assert "unknown key 'views.crop_sise'" in message
    assert "crop_size" in message and "crop_scale" in message


def test_unknown_section_lists_sections() -> None:
    with pytest.raises(DomainSSLError, match="Valid keys here: domain, out, name, data"):
        load_config("eo", "simclr", sets=["trainr.epochs=3"])


def test_wrong_type_names_key(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("trainer:\n  epochs: many\n")
    with pytest.raises(DomainSSLError, match="trainer.epochs"):
        load_config(config_file=path)


def test_python_object_tags_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.yaml"
    path.write_text("trainer: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(DomainSSLError, match="not valid YAML"):
        load_config(config_file=path)


def test_unknown_method_lists_shipped_configs() -> None:
    with pytest.raises(DomainSSLError, match="eo/simclr"):
        load_config("eo", "dino")


def test_max_time_parsing() -> None:
    assert parse_duration("00:20:00") == 1200
    assert parse_duration("1:00:00:01") == 86401
    with pytest.raises(DomainSSLError, match="HH:MM:SS"):
        load_config("eo", "simclr", overrides={"trainer.max_time": "20 minutes"})
