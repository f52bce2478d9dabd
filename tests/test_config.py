"""Run config: YAML loading, CLI overrides, and clear errors for unknown keys / bad values."""

from pathlib import Path

import pytest

import domainssl.methods  # noqa: F401  (registers the methods and view presets)
from domainssl.config import (
    METHOD_CONFIGS,
    MethodConfig,
    RunConfig,
    build_config,
    load_config,
    parse_duration,
    without_foreign_keys,
)
from domainssl.errors import DomainSSLError
from domainssl.methods.byol import BYOLConfig
from domainssl.methods.moco import MoCoConfig
from domainssl.methods.registry import METHODS, register_method
from domainssl.methods.simclr import SimCLR
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
        load_config("eo", "swav")


def test_max_time_parsing() -> None:
    assert parse_duration("00:20:00") == 1200
    assert parse_duration("1:00:00:01") == 86401
    with pytest.raises(DomainSSLError, match="HH:MM:SS"):
        load_config("eo", "simclr", overrides={"trainer.max_time": "20 minutes"})


def test_each_method_has_only_its_own_keys() -> None:
    moco = load_config("eo", "moco", sets=["method.queue_size=512"])
    assert isinstance(moco.method, MoCoConfig) and moco.method.queue_size == 512
    byol = load_config("eo", "byol").method
    assert isinstance(byol, BYOLConfig) and "queue_size" not in byol.model_dump()
    with pytest.raises(DomainSSLError, match="method 'byol' has no key 'queue_size'"):
        load_config("eo", "byol", sets=["method.queue_size=8"])


def test_view_preset_defaults_to_the_method_then_the_domain() -> None:
    assert RunConfig.model_validate({"method": {"name": "mmgl"}}).views.preset == "reid"
    assert RunConfig.model_validate({"domain": "pathology"}).views.preset == "pathology"
    explicit = {"method": {"name": "mmgl"}, "views": {"preset": "eo"}}
    assert RunConfig.model_validate(explicit).views.preset == "eo"


def test_a_new_method_registers_its_section_by_its_module_alone() -> None:
    class ToyConfig(MethodConfig):
        name: str = "toy"
        width: int = 3

    @register_method(ToyConfig, "a toy method for this test")
    class Toy(SimCLR):
        pass

    try:
        config = load_config("eo", "simclr", sets=["method={name: toy, width: 5}"])
        assert isinstance(config.method, ToyConfig) and config.method.width == 5
        assert METHODS["toy"].module is Toy
        with pytest.raises(DomainSSLError, match="Valid keys of toy: name, width"):
            load_config("eo", "simclr", sets=["method={name: toy, temperature: 0.1}"])
    finally:
        del METHODS["toy"], METHOD_CONFIGS.models["toy"]


def test_a_saved_config_of_an_older_version_resumes_without_foreign_keys() -> None:
    flat = {
        "method": {"name": "byol", "momentum": 0.9, "queue_size": 4096, "stripes": 4},
        "views": {"preset": "eo", "crop_size": 16, "hed_bias": 0.05, "erase_p": 0.5},
    }
    with pytest.raises(DomainSSLError, match="queue_size"):
        build_config(flat, "old run")
    config = build_config(without_foreign_keys(flat), "old run")
    assert isinstance(config.method, BYOLConfig) and config.method.momentum == 0.9
    assert config.views.model_dump()["crop_size"] == 16
