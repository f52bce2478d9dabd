"""DINO, iBOT and MAE: losses against reference formulas (lightly's code where it has them), the
DINO center across 2 gloo processes, masking, and runs on the EO demo whose exports timm
loads with the recorded ``timm_kwargs``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import timm
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from lightly.loss import DINOLoss as LightlyDINOLoss
from lightly.models.utils import patchify as lightly_patchify
from safetensors.torch import load_file
from test_quality import last_std_ratio
from typer.testing import CliRunner

from domainssl.cli import app
from domainssl.config import RunConfig
from domainssl.errors import DomainSSLError
from domainssl.losses.dino import DINOLoss
from domainssl.losses.koleo import KoLeoLoss
from domainssl.losses.masked_patches import MaskedPatchDistillation
from domainssl.losses.masked_pixels import MaskedPixelLoss, patchify
from domainssl.methods.mae import MAE

VIT = {"img_size": 16, "patch_size": 4, "dynamic_img_size": True, "depth": 2}


def test_dino_loss_and_center_match_lightly() -> None:
    torch.manual_seed(0)
    teacher, student = torch.randn(2, 5, 12), torch.randn(4, 5, 12)
    ours = DINOLoss(12, student_temperature=0.1, center_momentum=0.9)
    reference = LightlyDINOLoss(12, warmup_teacher_temp=0.05, teacher_temp=0.05,
                                student_temp=0.1, center_momentum=0.9)  # fmt: skip
    for _ in range(2):  # the second call sees the center the first one moved
        expected = reference(list(teacher), list(student), teacher_temp=0.05)
        assert ours(teacher, student, 0.05).item() == pytest.approx(expected.item(), rel=1e-5)
        assert torch.allclose(ours.center, reference.center.view(1, -1), atol=1e-6)


def test_dino_loss_by_hand_on_a_tiny_case() -> None:
    teacher = torch.tensor([[[2.0, 0.0]], [[0.0, 2.0]]])  # (G=2, B=1, K=2)
    student = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]], [[0.0, 0.0]]])  # (V=3, B=1, K=2)
    loss = DINOLoss(2, student_temperature=1.0)(teacher, student, 1.0)
    t = torch.softmax(teacher[:, 0], dim=-1)  # the center starts at 0
    log_s = torch.log_softmax(student[:, 0], dim=-1)
    pairs = [(g, v) for g in range(2) for v in range(3) if g != v]
    expected = sum(-(t[g] * log_s[v]).sum() for g, v in pairs) / len(pairs)
    assert loss.item() == pytest.approx(float(expected), rel=1e-6)


def center_worker(rank: int, init_file: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    torch.manual_seed(0)
    teacher = torch.randn(2, 8, 6)  # the joined batch; this rank holds half of it
    loss = DINOLoss(6, center_momentum=0.5)
    loss(teacher[:, rank * 4 : (rank + 1) * 4], torch.randn(3, 4, 6), 0.04)
    torch.save(loss.center, Path(out) / f"{rank}.pt")
    dist.destroy_process_group()


def test_dino_center_on_two_processes_equals_one_process_on_the_joined_batch(
    tmp_path: Path,
) -> None:
    mp.spawn(center_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    torch.manual_seed(0)
    teacher = torch.randn(2, 8, 6)
    single = DINOLoss(6, center_momentum=0.5)
    single(teacher, torch.randn(3, 8, 6), 0.04)
    for rank in (0, 1):
        assert torch.allclose(torch.load(tmp_path / f"{rank}.pt"), single.center, atol=1e-6)


def test_patchify_matches_lightly() -> None:
    images = torch.randn(2, 4, 12, 12)  # lightly's patchify takes square images
    assert torch.equal(patchify(images, 4).flatten(2), lightly_patchify(images, 4))


def test_masked_pixel_loss_by_hand() -> None:
    torch.manual_seed(0)
    images, patch = torch.randn(1, 2, 4, 4), 2  # 4 patches of 2 x 2 px, 2 bands
    prediction = torch.randn(1, 4, patch * patch * 2)
    masked = torch.tensor([[1.0, 0.0, 1.0, 0.0]])
    errors = []
    for index, (top, left) in enumerate([(0, 0), (0, 2), (2, 0), (2, 2)]):
        if not masked[0, index]:
            continue
        pixels = images[0, :, top : top + 2, left : left + 2].reshape(2, 4).T  # (4 px, 2 bands)
        normal = (pixels - pixels.mean(0)) / (pixels.var(0) + 1e-6).sqrt()
        errors.append(((prediction[0, index] - normal.flatten()) ** 2).mean())
    expected = sum(errors) / len(errors)
    assert MaskedPixelLoss(patch)(prediction, images, masked).item() == pytest.approx(
        float(expected), rel=1e-5
    )


def test_mae_hides_the_configured_share_and_needs_a_vit() -> None:
    config = RunConfig.model_validate(
        {"model": {"backbone": "vit_tiny_patch16_224", "timm_kwargs": VIT},
         "views": {"crop_size": 16}, "method": {"name": "mae", "mask_ratio": 0.75}}
    )  # fmt: skip
    method = MAE(config, ["a", "b", "c", "d"], [0.0] * 4, [1.0] * 4)
    encoded, shuffle = method.encode_visible(torch.randn(3, 4, 16, 16))
    assert shuffle.shape == (3, 16) and encoded.shape == (3, 1 + 4, 192)  # cls + 16 / 4
    loss, embedding = method.loss_and_embedding(torch.randn(3, 4, 16, 16), torch.zeros(1))
    loss.backward()
    assert torch.isfinite(loss) and embedding.shape == (3, 192)
    assert method.backbone.patch_embed.proj.weight.grad is not None  # type: ignore[union-attr]
    cnn = config.model_copy(update={"model": config.model.model_copy(
        update={"backbone": "resnet10t", "timm_kwargs": {}})})  # fmt: skip
    with pytest.raises(DomainSSLError, match="MAE needs a ViT"):
        MAE(cnn, ["a"], [0.0], [1.0])


@pytest.mark.parametrize(
    ("method", "backbone"),
    [("dino", "resnet18"), ("dino", "vit_tiny_patch16_224"), ("mae", "vit_tiny_patch16_224")],
)
def test_dino_and_mae_run_on_the_demo_and_timm_loads_the_export(
    method: str, backbone: str, tmp_path: Path
) -> None:
    sets = ["data.batch_size=16", "trainer.limit_train_batches=1", "trainer.accelerator=cpu",
            "data.num_workers=0", "method.local_crops=2", "method.out_dim=256"]  # fmt: skip
    sets = [s for s in sets if method == "dino" or not s.startswith(("method.local", "method.out"))]
    args = ["pretrain", "--method", method, "--backbone", backbone, "--epochs", "1",
            "--out", str(tmp_path), "--name", "run"]  # fmt: skip
    result = CliRunner().invoke(app, args + [f"--set={s}" for s in sets])
    assert result.exit_code == 0, result.output
    meta = json.loads((tmp_path / "run" / "backbone.json").read_text())
    if backbone.startswith("vit"):
        assert meta["timm_kwargs"] == {"img_size": 32, "patch_size": 4, "dynamic_img_size": True}
    else:
        assert meta["timm_kwargs"] == {}
    model = timm.create_model(
        meta["timm_name"], in_chans=meta["in_chans"], num_classes=0, **meta["timm_kwargs"]
    )
    model.load_state_dict(load_file(tmp_path / "run" / "backbone.safetensors"))


def test_dino_short_real_run_does_not_collapse(tmp_path: Path) -> None:
    sets = ["model.backbone=resnet10t", "data.batch_size=64", "trainer.epochs=3",
            "trainer.accelerator=cpu", "data.num_workers=0", "method.local_crops=2",
            "method.out_dim=512"]  # fmt: skip
    args = ["pretrain", "--method", "dino", "--out", str(tmp_path), "--name", "q"]
    result = CliRunner().invoke(app, args + [f"--set={s}" for s in sets])
    assert result.exit_code == 0, result.output
    assert last_std_ratio(tmp_path / "q") > 0.3


def test_masked_patch_distillation_by_hand() -> None:
    torch.manual_seed(0)
    teacher, student = torch.randn(1, 2, 3, 4), torch.randn(1, 2, 3, 4)  # G=1, B=2, N=3, K=4
    masks = torch.tensor([[[1, 0, 1], [0, 0, 0]]])
    loss = MaskedPatchDistillation(4, student_temperature=0.1)(teacher, student, masks, 0.05)
    t = torch.softmax(teacher / 0.05, dim=-1)
    log_s = torch.log_softmax(student / 0.1, dim=-1)
    image0 = (-(t[0, 0, 0] * log_s[0, 0, 0]).sum() - (t[0, 0, 2] * log_s[0, 0, 2]).sum()) / 2
    expected = (image0 + 0.0) / 2  # the second image had no masked patch
    assert loss.item() == pytest.approx(float(expected), rel=1e-5)


def test_koleo_by_hand() -> None:
    points = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.1]])
    x = torch.nn.functional.normalize(points, dim=1)
    nearest = [2, 2, 0]  # 0 and 2 are close; 1 is nearest to 2
    expected = -sum(torch.log((x[i] - x[j]).norm() + 1e-8) for i, j in enumerate(nearest)) / 3
    assert KoLeoLoss()(points).item() == pytest.approx(float(expected), rel=1e-5)


def patch_center_worker(rank: int, init_file: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    torch.manual_seed(0)
    teacher = torch.randn(2, 8, 5, 6)  # (G, joined B, N, K)
    loss = MaskedPatchDistillation(6, center_momentum=0.5)
    mine = teacher[:, rank * 4 : (rank + 1) * 4]
    loss(mine, torch.randn_like(mine), torch.ones(2, 4, 5), 0.04)
    torch.save(loss.center, Path(out) / f"{rank}.pt")
    dist.destroy_process_group()


def test_ibot_patch_center_on_two_processes_equals_one_process_on_the_joined_batch(
    tmp_path: Path,
) -> None:
    args = (str(tmp_path / "init"), str(tmp_path))
    mp.spawn(patch_center_worker, args=args, nprocs=2, join=True)
    torch.manual_seed(0)
    teacher = torch.randn(2, 8, 5, 6)
    single = MaskedPatchDistillation(6, center_momentum=0.5)
    single(teacher, torch.randn_like(teacher), torch.ones(2, 8, 5), 0.04)
    for rank in (0, 1):
        assert torch.allclose(torch.load(tmp_path / f"{rank}.pt"), single.center, atol=1e-6)


def test_ibot_runs_on_the_demo_and_refuses_a_cnn(tmp_path: Path) -> None:
    sets = ["data.batch_size=16", "trainer.limit_train_batches=1", "trainer.accelerator=cpu",
            "data.num_workers=0", "method.local_crops=2", "method.out_dim=256",
            "method.koleo_weight=0.1"]  # fmt: skip
    args = ["pretrain", "--method", "ibot", "--backbone", "vit_tiny_patch16_224", "--epochs",
            "1", "--out", str(tmp_path), "--name", "run"]  # fmt: skip
    result = CliRunner().invoke(app, args + [f"--set={s}" for s in sets])
    assert result.exit_code == 0, result.output
    meta = json.loads((tmp_path / "run" / "backbone.json").read_text())
    model = timm.create_model(
        meta["timm_name"], in_chans=meta["in_chans"], num_classes=0, **meta["timm_kwargs"]
    )
    model.load_state_dict(load_file(tmp_path / "run" / "backbone.safetensors"))
    cnn = ["pretrain", "--method", "ibot", "--backbone", "resnet10t", "--out", str(tmp_path)]
    result = CliRunner().invoke(app, cnn)
    assert result.exit_code == 2 and "iBOT masks patch tokens" in result.output
