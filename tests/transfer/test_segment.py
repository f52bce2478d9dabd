"""Segmentation transfer: metrics, folder data and its errors, encoder loading, tiling, fit."""

import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from fixtures import write_geotiff, write_segmentation_folder
from PIL import Image
from sklearn.metrics import accuracy_score, f1_score, jaccard_score
from torch import nn

from domainssl.data.imageio import read_image
from domainssl.errors import DomainSSLError
from domainssl.export import BackboneMeta, preprocess
from domainssl.models.backbones import create_backbone, first_conv_key
from domainssl.transfer.segmentation.data import (
    SegmentationSet,
    find_pairs,
    load_segmentation_data,
    scan_labels,
    split_pairs,
)
from domainssl.transfer.segmentation.metrics import confusion_matrix, metrics_from_confusion
from domainssl.transfer.segmentation.model import build_segmenter
from domainssl.transfer.segmentation.overlays import save_overlays
from domainssl.transfer.segmentation.training import (
    SegmentTrainConfig,
    TrainingTiles,
    _optimizer,
    config_for_init,
    evaluate_segmenter,
    fit_segmenter,
    predict_logits,
)


def make_meta(**changes: object) -> BackboneMeta:
    fields: dict = dict(
        timm_name="resnet10t",
        small_input=True,
        in_chans=3,
        band_names=["B1", "B2", "B3"],
        mean=[1200.0] * 3,
        std=[600.0] * 3,
        feature_dim=512,
        input_size=32,
        method="simclr",
        domain="eo",
        data_source="x",
        config={},
    )
    return BackboneMeta(**{**fields, **changes})


def whole_set(root: Path, in_chans: int = 3) -> SegmentationSet:
    pairs = find_pairs(root)
    return SegmentationSet(pairs, in_chans, scan_labels(pairs, in_chans, ignore_index=255))


def test_metrics_match_sklearn_with_ignored_pixels() -> None:
    rng = np.random.default_rng(0)
    target = rng.integers(0, 4, (50, 40))
    prediction = np.where(rng.random(target.shape) < 0.6, target, rng.integers(0, 4, target.shape))
    target[rng.random(target.shape) < 0.1] = 255
    metrics = metrics_from_confusion(confusion_matrix(target, prediction, 4, ignore_index=255))
    valid = target != 255
    truth, predicted = target[valid], prediction[valid]
    assert np.array(metrics.confusion).sum() == valid.sum()
    expected_iou = jaccard_score(truth, predicted, labels=range(4), average=None)
    np.testing.assert_allclose(np.array(metrics.per_class_iou, dtype=float), expected_iou)
    np.testing.assert_allclose(metrics.miou, jaccard_score(truth, predicted, average="macro"))
    expected_dice = f1_score(truth, predicted, labels=range(4), average=None)
    np.testing.assert_allclose(np.array(metrics.per_class_dice, dtype=float), expected_dice)
    assert metrics.pixel_accuracy == pytest.approx(accuracy_score(truth, predicted))


def test_a_class_never_seen_is_none_and_left_out_of_the_mean() -> None:
    target, prediction = np.array([0, 0, 1, 1]), np.array([0, 1, 1, 1])
    metrics = metrics_from_confusion(confusion_matrix(target, prediction, 3, ignore_index=255))
    assert metrics.per_class_iou == [0.5, pytest.approx(2 / 3), None]
    assert metrics.miou == pytest.approx((0.5 + 2 / 3) / 2)


@pytest.mark.parametrize("mask_fmt", ["png", "tif"])
def test_binary_0_255_masks_read_as_classes_0_and_1(tmp_path: Path, mask_fmt: str) -> None:
    root = write_segmentation_folder(tmp_path, count=2, size=32, mask_fmt=mask_fmt)
    data = whole_set(root)
    raw = read_image(root / "masks" / f"img_0.{mask_fmt}").array[0]  # (H, W)
    assert data.encoding.num_classes == 2 and set(np.unique(raw)) == {0, 255}
    np.testing.assert_array_equal(data[0]["mask"].numpy(), raw // 255)


def test_ignore_index_and_geotiff_nodata_are_ignored(tmp_path: Path) -> None:
    write_segmentation_folder(tmp_path, count=1, size=16)
    (tmp_path / "masks" / "img_0.png").unlink()
    mask = np.tile(np.array([0, 1, 2, 7], np.uint8), (16, 4))  # (16, 16), 7 = nodata
    mask[0, :2] = 99
    write_geotiff(tmp_path / "masks" / "img_0.tif", mask[None], nodata=7)
    pairs = find_pairs(tmp_path)
    encoding = scan_labels(pairs, 3, ignore_index=99)
    labels = SegmentationSet(pairs, 3, encoding)[0]["mask"].numpy()
    assert encoding.num_classes == 3
    assert (labels == 99).sum() == (mask == 7).sum() + 2


def test_palette_png_masks_keep_their_indices(tmp_path: Path) -> None:
    write_segmentation_folder(tmp_path, count=1, size=16)
    indices = np.repeat(np.arange(4, dtype=np.uint8), 64).reshape(16, 16)
    palette = Image.fromarray(indices, mode="P")
    palette.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255])
    palette.save(tmp_path / "masks" / "img_0.png")
    data = whole_set(tmp_path)
    assert data.encoding.num_classes == 4
    np.testing.assert_array_equal(data[0]["mask"].numpy(), indices)


def test_missing_folder_and_images_without_masks_are_named(tmp_path: Path) -> None:
    root = write_segmentation_folder(tmp_path / "data", count=5, size=16)
    for stem in ("img_2", "img_4"):
        (root / "masks" / f"{stem}.png").unlink()
    with pytest.raises(DomainSSLError, match=r"2 image\(s\) .* no mask .*: img_2, img_4"):
        find_pairs(root)
    shutil.rmtree(root / "masks")
    with pytest.raises(DomainSSLError, match=r"data/masks does not exist: .* images/ and masks/"):
        find_pairs(root)


def test_size_band_and_mask_band_mismatches_are_clear(tmp_path: Path) -> None:
    root = write_segmentation_folder(tmp_path, count=3, size=32)
    with pytest.raises(DomainSSLError, match=r"img_\d.tif has 3 bands, the backbone expects 4"):
        load_segmentation_data(root, in_chans=4)
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(root / "masks" / "img_1.png")
    with pytest.raises(DomainSSLError, match=r"img_1.png is 16x16 px but .*img_1.tif is 32x32"):
        load_segmentation_data(root, in_chans=3, val=0.0)
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(root / "masks" / "img_1.png")
    with pytest.raises(DomainSSLError, match=r"img_1.png has 3 bands: a mask is one band"):
        load_segmentation_data(root, in_chans=3, val=0.0)


def test_seeded_split_by_image_and_given_subfolders(tmp_path: Path) -> None:
    pairs = find_pairs(write_segmentation_folder(tmp_path / "flat", count=10, size=8))
    split = split_pairs(pairs, val=0.1, test=0.2, seed=3)
    assert (len(split.train), len(split.val), len(split.test)) == (7, 1, 2)
    assert sorted(split.train + split.val + split.test, key=str) == sorted(pairs, key=str)
    assert split_pairs(pairs, val=0.1, test=0.2, seed=3) == split
    write_segmentation_folder(tmp_path / "given" / "train", count=8, size=8)
    write_segmentation_folder(tmp_path / "given" / "test", count=2, size=8, seed=1)
    data = load_segmentation_data(tmp_path / "given", in_chans=3, val=0.1)
    assert (len(data.train), len(data.val)) == (7, 1)
    assert all("test" in str(p.image.parent) for p in data.test.pairs) and len(data.test) == 2


def test_training_tiles_pad_small_images_with_ignore(tmp_path: Path) -> None:
    tiles = TrainingTiles(whole_set(write_segmentation_folder(tmp_path, count=1, size=20)), 32)
    sample = tiles[0]
    assert sample["image"].shape == (3, 32, 32) and sample["mask"].shape == (32, 32)
    padded = sample["mask"] == 255
    assert int(padded.sum()) == 32 * 32 - 20 * 20 and bool((sample["image"][:, padded] == 0).all())


def test_training_tiles_of_few_images_fill_a_batch_with_different_tiles(tmp_path: Path) -> None:
    source = whole_set(write_segmentation_folder(tmp_path, count=2, size=64))
    tiles = TrainingTiles(source, 16, min_tiles=8)
    assert len(tiles) == 8
    torch.manual_seed(0)
    batch = [tiles[i]["image"] for i in range(8)]
    assert len({tuple(t.flatten()[:32].tolist()) for t in batch}) == 8  # random, not repeats
    whole = TrainingTiles(source, 64, min_tiles=8)  # a tile is the whole image, turned
    sums = [float(source[i]["image"].sum()) for i in range(2)]
    assert sums[0] != sums[1]
    assert [float(whole[i]["image"].sum()) for i in range(8)] == pytest.approx(sums * 4)
    assert len(TrainingTiles(source, 16, min_tiles=1)) == 2  # one tile per image per epoch


@pytest.mark.parametrize("name", ["resnet10t", "resnet18"])
def test_pretrained_encoder_weights_really_load(name: str) -> None:
    torch.manual_seed(0)
    backbone = create_backbone(name, in_chans=3, small_input=True)
    backbone.train()(torch.randn(4, 3, 32, 32))  # move BatchNorm statistics off their defaults
    state = backbone.eval().state_dict()
    segmenter = build_segmenter(make_meta(timm_name=name), 3, state).eval()
    conv1 = segmenter.encoder.state_dict()[first_conv_key(segmenter.encoder)]
    assert torch.equal(conv1, state[first_conv_key(backbone)])
    images = torch.randn(2, 3, 40, 56)
    with torch.no_grad():
        pooled = segmenter.encoder(images)[-1].mean(dim=(2, 3))  # (2, D)
        assert torch.allclose(pooled, backbone(images), atol=1e-6)
        assert segmenter(images).shape == (2, 3, 40, 56)
    random_init = build_segmenter(make_meta(timm_name=name), 3, None)
    assert not torch.equal(
        random_init.encoder.state_dict()[first_conv_key(random_init.encoder)], conv1
    )


def test_a_backbone_of_another_architecture_is_refused() -> None:
    state = create_backbone("resnet10t", in_chans=3).state_dict()
    with pytest.raises(DomainSSLError, match="not trained with this architecture"):
        build_segmenter(make_meta(timm_name="resnet18"), 2, state)


def test_tiled_prediction_equals_whole_image_prediction_of_a_per_pixel_model(
    tmp_path: Path,
) -> None:
    torch.manual_seed(0)
    model, meta = nn.Conv2d(3, 2, kernel_size=1), make_meta()
    for height, width in [(45, 70), (20, 27)]:  # larger than and smaller than a tile
        image = torch.rand(3, height, width) * 3000
        with torch.no_grad():
            whole = model(preprocess(meta, image[None]))[0]  # (2, H, W)
        tiled = predict_logits(model, meta, image, tile=32, stride=12, batch_size=3)
        assert tiled.shape == whole.shape and torch.allclose(tiled, whole, atol=1e-5)
    test_set = whole_set(write_segmentation_folder(tmp_path, count=2, size=48))
    expected = np.zeros((2, 2), np.int64)
    for index in range(len(test_set)):
        sample = test_set[index]
        with torch.no_grad():
            prediction = model(preprocess(meta, sample["image"][None]))[0].argmax(0)
        expected += confusion_matrix(sample["mask"].numpy(), prediction.numpy(), 2, 255)
    assert evaluate_segmenter(model, meta, test_set, tile=32).confusion == expected.tolist()


def test_segmenter_overfits_bright_squares(tmp_path: Path) -> None:
    data = whole_set(write_segmentation_folder(tmp_path, count=6, size=48))
    meta = make_meta(small_input=False)
    torch.manual_seed(0)
    model = build_segmenter(meta, 2, None, decoder_width=16)
    config = SegmentTrainConfig(tile=32, epochs=25, batch_size=6, lr=1e-2, encoder_lr_scale=1.0)
    summary = fit_segmenter(model, meta, data, config, device="cpu")
    assert summary.steps == 25 and not summary.stopped_by_time
    metrics = evaluate_segmenter(model, meta, data, tile=32, device="cpu")
    assert metrics.miou > 0.8, metrics
    written = save_overlays(model, meta, data, tmp_path / "overlays", tile=32, count=2)
    assert [p.name for p in written] == ["img_0_overlay.png", "img_1_overlay.png"]
    assert Image.open(written[0]).size == (3 * 48, 48)


def test_time_limit_stops_cleanly_and_a_frozen_encoder_does_not_change(tmp_path: Path) -> None:
    data = whole_set(write_segmentation_folder(tmp_path, count=4, size=32))
    meta = make_meta()
    model = build_segmenter(meta, 2, None, decoder_width=16)
    encoder_before = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    head_before = model.head.weight.detach().clone()
    config = SegmentTrainConfig(
        tile=32, epochs=5, batch_size=2, max_time_s=0.0, freeze_encoder=True
    )
    summary = fit_segmenter(model, meta, data, config, device="cpu")
    assert summary.stopped_by_time and summary.steps == 1 and len(summary.epoch_losses) == 1
    for key, value in model.encoder.state_dict().items():
        assert torch.equal(value, encoder_before[key]), key
    assert not torch.equal(model.head.weight, head_before)
    assert not any(p.requires_grad for p in model.encoder.parameters())  # no wasted gradients


def test_a_time_budget_without_epochs_trains_until_it_is_spent(tmp_path: Path) -> None:
    data = whole_set(write_segmentation_folder(tmp_path, count=2, size=32))
    model = build_segmenter(make_meta(), 2, None, decoder_width=16)
    config = SegmentTrainConfig(tile=32, epochs=None, batch_size=2, max_time_s=1.5)
    start = time.monotonic()
    summary = fit_segmenter(model, meta=make_meta(), train_set=data, config=config, device="cpu")
    assert summary.stopped_by_time and time.monotonic() - start >= 1.5
    assert len(summary.epoch_losses) == summary.steps > 1  # one step per epoch, many epochs


def test_a_random_init_encoder_learns_at_the_decoder_rate_a_pretrained_one_slower() -> None:
    model = build_segmenter(make_meta(), 2, None, decoder_width=16)
    config = SegmentTrainConfig(lr=1e-3)

    def rates(baseline: str) -> list[float]:
        return sorted(
            g["lr"] for g in _optimizer(model, config_for_init(config, baseline)).param_groups
        )

    assert rates("pretrained") == pytest.approx([1e-4, 1e-3])
    assert rates("random") == pytest.approx([1e-3, 1e-3])


def test_a_frozen_warmup_trains_the_decoder_alone_first_then_the_encoder(tmp_path: Path) -> None:
    data = whole_set(write_segmentation_folder(tmp_path, count=2, size=32))
    meta = make_meta()
    model = build_segmenter(meta, 2, None, decoder_width=16)
    weights_before = {k: v.detach().clone() for k, v in model.encoder.named_parameters()}
    seen: list[tuple[bool, bool]] = []  # per training forward: (BN in train mode, has grads)
    model.encoder.register_forward_pre_hook(
        lambda module, _: seen.append((module.training, next(module.parameters()).requires_grad))
    )
    config = SegmentTrainConfig(tile=32, epochs=4, batch_size=2, frozen_warmup=0.5)
    summary = fit_segmenter(model, meta, data, config, device="cpu")
    assert summary.steps == 4  # one batch of 2 tiles per epoch
    assert seen == [(False, False)] * 2 + [(True, True)] * 2
    assert any(not torch.equal(v, weights_before[k]) for k, v in model.encoder.named_parameters())


def test_random_init_gets_no_frozen_warmup() -> None:
    config = SegmentTrainConfig(frozen_warmup=0.3)
    assert config_for_init(config, "pretrained").frozen_warmup == 0.3
    assert config_for_init(config, "random").frozen_warmup == 0.0
