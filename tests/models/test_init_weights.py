"""Starting from pretrained weights: the kinds of ``--init``, key layouts, bands by name,
ViTs at other sizes, and the continued-pretraining defaults."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
from fixtures import write_chip_folder, write_hf_cache, write_scene
from safetensors.torch import load_file, save_file

from domainssl.config import OptimizerConfig
from domainssl.errors import DomainSSLError
from domainssl.models.backbones import apply_init, create_backbone
from domainssl.models.band_mapping import by_name, match_bands, mean_filter
from domainssl.models.init_weights import InitWeights, init_architecture, resolve_init
from domainssl.models.weight_layouts import QKV


def cli(*args: str, home: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HOME": str(home), "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}
    command = [sys.executable, "-m", "domainssl", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)


SMALL = ["--set=data.sample_size=32", "--set=views.crop_size=16", "--set=data.batch_size=8",
         "--set=data.num_workers=0", "--set=method.proj_hidden_dim=16",
         "--set=method.proj_dim=8", "--accelerator=cpu", "--epochs=1"]  # fmt: skip


def test_a_cached_hub_model_starts_the_run_and_the_export_stays_close(tmp_path: Path) -> None:
    cached = load_file(write_hf_cache(tmp_path / "hf"))
    chips = write_chip_folder(tmp_path / "chips", fmt="jpg")
    result = cli("pretrain", "--init", "hf-hub:org/tiny", "--data", str(chips), "--out",
                 str(tmp_path), "--name", "r", "--set=optimizer.lr=0.001", *SMALL,
                 home=tmp_path / "hf")  # fmt: skip
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    meta = json.loads((tmp_path / "r" / "backbone.json").read_text())
    assert meta["timm_name"] == "resnet10t"  # the architecture of the init, not resnet18
    assert meta["init"]["source"] == "hf-hub:org/tiny" and meta["init"]["adapted"] is None
    exported = load_file(tmp_path / "r" / "backbone.safetensors")
    for key in ("conv1.0.weight", "layer4.0.conv2.weight"):
        change = (exported[key] - cached[key]).norm() / cached[key].norm()
        assert change < 0.05, (key, float(change))


def test_a_hub_id_missing_from_the_cache_names_the_fetch_command(tmp_path: Path) -> None:
    chips = write_chip_folder(tmp_path / "chips", fmt="jpg")
    (tmp_path / "hf").mkdir()
    result = cli("pretrain", "--init", "hf-hub:org/missing", "--data", str(chips), "--out",
                 str(tmp_path / "runs"), *SMALL, home=tmp_path / "hf")  # fmt: skip
    assert result.returncode == 2
    assert "hf download org/missing" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "runs").exists()


def test_a_four_band_scene_starts_from_rgb_weights_by_name(tmp_path: Path) -> None:
    write_hf_cache(tmp_path / "hf")
    scene = write_scene(tmp_path / "scene.tif", height=96, width=96)
    result = cli("pretrain", "--init", "hf-hub:org/tiny", "--data", str(scene), "--out",
                 str(tmp_path), "--name", "s", "--set=model.adapt_in_chans=by_name",
                 "--set=data.bands=[red,green,blue,nir]", "--set=data.samples_per_epoch=16",
                 *SMALL, home=tmp_path / "hf")  # fmt: skip
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    init = json.loads((tmp_path / "s" / "backbone.json").read_text())["init"]
    assert init["adapted"] == {
        "how": "by_name",
        "bands": {"red": "red", "green": "green", "blue": "blue", "nir": None},
    }


def test_bands_match_by_number_or_colour() -> None:
    s2 = ["B1", "B2", "B3", "B4", "B8", "B8a"]
    assert match_bands(["B04", "B08", "B8A", "B12"], s2) == {
        "B04": "B4", "B08": "B8", "B8A": "B8a", "B12": None}  # fmt: skip
    rgb = ["red", "green", "blue"]
    assert match_bands(["B04", "B03", "B02", "SR_B4", "B4", "nir"], rgb) == {
        "B04": "red", "B03": "green", "B02": "blue",
        "SR_B4": "red", "B4": None, "nir": None}  # fmt: skip


def test_by_name_keeps_matched_filters_and_gives_the_rest_the_rescaled_mean() -> None:
    weight = torch.randn(6, 3, 3, 3)
    adapted, mapping = by_name(weight, ["blue", "nir", "red"], ["red", "green", "blue"])
    assert mapping == {"blue": "blue", "nir": None, "red": "red"}
    assert torch.equal(adapted[:, 0], weight[:, 2]) and torch.equal(adapted[:, 2], weight[:, 0])
    assert torch.allclose(adapted[:, 1], mean_filter(weight, 3)[:, 0])


def to_hugging_face(state: dict[str, torch.Tensor], blocks: int) -> dict[str, torch.Tensor]:
    """timm ViT keys written the way a Hugging Face ViTModel stores them (for the test)."""
    out = {"vit.embeddings.cls_token": state["cls_token"],
           "vit.embeddings.position_embeddings": state["pos_embed"],
           "vit.embeddings.patch_embeddings.projection.weight": state["patch_embed.proj.weight"],
           "vit.embeddings.patch_embeddings.projection.bias": state["patch_embed.proj.bias"],
           "vit.layernorm.weight": state["norm.weight"], "vit.layernorm.bias": state["norm.bias"],
           "classifier.weight": torch.zeros(2, 192)}  # fmt: skip
    names = {"norm1": "layernorm_before", "norm2": "layernorm_after",
             "attn.proj": "attention.output.dense", "mlp.fc1": "intermediate.dense",
             "mlp.fc2": "output.dense"}  # fmt: skip
    for i in range(blocks):
        layer = f"vit.encoder.layer.{i}"
        for ours, theirs in names.items():
            for kind in ("weight", "bias"):
                out[f"{layer}.{theirs}.{kind}"] = state[f"blocks.{i}.{ours}.{kind}"]
        for kind in ("weight", "bias"):
            for part, chunk in zip(QKV, state[f"blocks.{i}.attn.qkv.{kind}"].chunk(3), strict=True):
                out[f"{layer}.attention.attention.{part}.{kind}"] = chunk
    return out


def test_a_hugging_face_vit_file_loads_into_timms_vit(tmp_path: Path) -> None:
    torch.manual_seed(0)
    source = timm.create_model("vit_tiny_patch16_224", num_classes=0)
    path = tmp_path / "hf_vit.safetensors"
    blocks = len({key.split(".")[1] for key in source.state_dict() if key.startswith("blocks.")})
    hf = to_hugging_face(source.state_dict(), blocks)
    save_file({k: v.contiguous() for k, v in hf.items()}, str(path))
    target = create_backbone("vit_tiny_patch16_224", 3)
    apply_init(target, resolve_init(str(path)), ["red", "green", "blue"])
    for key, value in source.state_dict().items():
        assert torch.equal(value, target.state_dict()[key]), key


def test_a_file_of_another_layout_lists_the_keys_that_fit_nothing(tmp_path: Path) -> None:
    path = tmp_path / "odd.safetensors"
    save_file({"trunk.stem.weight": torch.zeros(3, 3)}, str(path))
    with pytest.raises(DomainSSLError, match=r"fit nothing: \['trunk.stem.weight'\]"):
        apply_init(create_backbone("resnet10t", 3), resolve_init(str(path)), ["r", "g", "b"])


def test_vit_weights_fit_a_smaller_chip_and_patch_size() -> None:
    torch.manual_seed(0)
    source = create_backbone("vit_tiny_patch16_224", 3)
    init = InitWeights(source.state_dict(), "a 224 px, patch 16 ViT", bands=["r", "g", "b"])
    small = create_backbone(
        "vit_tiny_patch16_224", 3, timm_kwargs={"img_size": 64, "patch_size": 8}
    )
    apply_init(small, init, ["r", "g", "b"])
    assert small(torch.randn(2, 3, 64, 64)).shape == (2, 192)
    assert torch.equal(small.state_dict()["blocks.0.attn.qkv.weight"],
                       source.state_dict()["blocks.0.attn.qkv.weight"])  # fmt: skip


def test_run_folders_and_torchgeo_names_say_their_architecture(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fixtures import write_infer_models

    models = write_infer_models(tmp_path / "models")
    assert init_architecture(str(models["embed"])) == "resnet10t"
    assert init_architecture(str(models["classify"])) == "resnet10t"
    assert resolve_init(str(models["classify"])).bands == ["B1", "B2", "B3"]
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "torch_hub"))
    assert init_architecture("torchgeo:ResNet18_Weights.SENTINEL2_RGB_MOCO") == "resnet18"
    with pytest.raises(DomainSSLError, match=r"place https://.*torch_hub/checkpoints/"):
        resolve_init("torchgeo:ResNet18_Weights.SENTINEL2_RGB_MOCO")
    with pytest.raises(DomainSSLError, match="no such file or folder"):
        resolve_init(str(tmp_path / "nowhere" / "run"))


def test_continued_pretraining_lowers_the_learning_rate_and_shortens_warmup() -> None:
    optimizer = OptimizerConfig(lr=1.0, warmup_fraction=0.05)
    assert optimizer.peak_lr(False) == 1.0 and optimizer.warmup(False) == 0.05
    assert optimizer.peak_lr(True) == pytest.approx(0.1) and optimizer.warmup(True) == 0.01


def test_ema_teachers_start_from_the_init(tmp_path: Path) -> None:
    from domainssl.config import RunConfig
    from domainssl.methods.byol import BYOL

    torch.manual_seed(0)
    source = create_backbone("resnet10t", 3, True)
    path = tmp_path / "init.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    config = RunConfig.model_validate(
        {"model": {"backbone": "resnet10t", "init": str(path)}, "views": {"crop_size": 16},
         "method": {"name": "byol", "proj_hidden_dim": 16, "proj_dim": 8, "pred_hidden_dim": 8}}
    )  # fmt: skip
    method = BYOL(config, ["red", "green", "blue"], [0.0] * 3, [1.0] * 3)
    for key, value in source.state_dict().items():
        assert torch.equal(method.backbone.state_dict()[key], value), key
        assert torch.equal(method.target_backbone.state_dict()[key], value), key
