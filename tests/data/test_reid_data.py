"""Re-ID loaders on generated SYSU-MM01 / RegDB / generic layouts, samplers, modality views."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import torch
from reid_fixtures import write_generic, write_regdb, write_sysu

from domainssl.data.reid import (
    IR,
    RGB,
    IdentityBalancedSampler,
    ModalityPairs,
    ModalityPairSampler,
    PersonImages,
    detect_layout,
    read_regdb,
    read_sysu,
    sysu_ids,
    training_images,
)
from domainssl.errors import DomainSSLError
from domainssl.transfer.reid.transfer import single_shot
from domainssl.views.modality import (
    LUMA,
    grayscale,
    horizontal_flip,
    person_resize,
    random_channel,
    random_erasing,
    to_three_channels,
)
from domainssl.views.presets import ReidViews
from domainssl.views.settings import ReidViewsConfig


def test_sysu_layout_ids_cameras_and_modalities(tmp_path: Path) -> None:
    root = write_sysu(tmp_path / "SYSU-MM01")
    assert detect_layout(root) == "sysu"
    assert sysu_ids(root, "train") == [1, 2, 3] and sysu_ids(root, "test") == [5, 6, 7]
    train = training_images(root)  # train + val identities, all six cameras, 2 per camera
    assert len(train) == 4 * 6 * 2
    assert {im.pid for im in train} == {1, 2, 3, 4}
    assert all((im.modality == IR) == (im.cam in (3, 6)) for im in train)
    assert all(im.path.parent.name == f"{im.pid:04d}" for im in train)
    gallery = read_sysu(root, [5, 6, 7], (1, 2, 4, 5))
    assert Counter(im.cam for im in gallery) == {1: 6, 2: 6, 4: 4, 5: 4}  # pid 7 lacks 4, 5


def test_person_images_read_infrared_as_three_equal_channels(tmp_path: Path) -> None:
    root = write_sysu(tmp_path / "SYSU-MM01")
    images = PersonImages(read_sysu(root, [5], (1, 3)), size=(24, 12))
    rgb, ir = images[0], images[len(images) - 1]
    assert rgb["modality"] == RGB and ir["modality"] == IR and ir["cam"] == 3
    for sample in (rgb, ir):
        assert sample["image"].shape == (3, 24, 12) and sample["image"].dtype == torch.uint8
        assert sample["pid"] == 5
    assert torch.equal(ir["image"][0], ir["image"][1]) and torch.equal(
        ir["image"][0], ir["image"][2]
    )
    assert not torch.equal(rgb["image"][0], rgb["image"][1])


def test_regdb_layout_reads_split_files(tmp_path: Path) -> None:
    root = write_regdb(tmp_path / "RegDB", identities=6, per_identity=3, trials=2)
    assert detect_layout(root) == "regdb"
    train, test = read_regdb(root, "train", 1), read_regdb(root, "test", 1)
    assert len(train) == len(test) == 3 * 3 * 2
    assert not {im.pid for im in train} & {im.pid for im in test}
    assert {(im.modality, im.cam) for im in test} == {(RGB, 1), (IR, 2)}
    assert all(im.path.is_file() and im.path.parent.name == str(im.pid) for im in test)
    assert {im.pid for im in read_regdb(root, "test", 2)} != {im.pid for im in test}
    thermal = PersonImages([im for im in test if im.modality == IR], (32, 16))[0]["image"]
    assert torch.equal(thermal[0], thermal[2])
    with pytest.raises(DomainSSLError, match="test_visible_3.txt is missing"):
        read_regdb(root, "test", 3)


def test_generic_layout_and_unknown_layout(tmp_path: Path) -> None:
    root = write_generic(tmp_path / "generic", identities=3, per_identity=2)
    assert detect_layout(root) == "generic"
    images = training_images(root)
    assert len(images) == 12 and {im.pid for im in images} == {0, 1, 2}
    assert Counter(im.modality for im in images) == {RGB: 6, IR: 6}
    (tmp_path / "other").mkdir()
    with pytest.raises(DomainSSLError, match="SYSU-MM01"):
        detect_layout(tmp_path / "other")


def test_single_shot_gallery_draws_one_per_identity_and_camera(tmp_path: Path) -> None:
    root = write_sysu(tmp_path / "SYSU-MM01", per_camera=4)
    pool = read_sysu(root, [5, 6, 7], (1, 2, 4, 5))
    draws = [single_shot(pool, trial) for trial in range(3)]
    for gallery in draws:
        assert Counter((im.pid, im.cam) for im in gallery) == {
            key: 1 for key in {(im.pid, im.cam) for im in pool}
        }
    assert single_shot(pool, 0) == draws[0] and draws[0] != draws[1]


def test_modality_pair_sampler_pairs_rgb_with_ir() -> None:
    modalities = [RGB] * 7 + [IR] * 3
    pairs = list(ModalityPairSampler(modalities, seed=0))
    assert len(pairs) == 7
    assert sorted(rgb for rgb, _ in pairs) == list(range(7))  # each RGB image once
    assert all(modalities[ir] == IR for _, ir in pairs)
    assert Counter(ir for _, ir in pairs).keys() == {7, 8, 9}
    assert pairs != list(ModalityPairSampler(modalities, seed=1))
    with pytest.raises(DomainSSLError, match="both modalities"):
        ModalityPairSampler([RGB, RGB])


def test_modality_pairs_dataset_returns_both_images(tmp_path: Path) -> None:
    root = write_generic(tmp_path / "generic", identities=2, per_identity=1)
    images = PersonImages(training_images(root), (32, 16))
    sample = ModalityPairs(images)[(0, 3)]
    assert sample["rgb"].shape == sample["ir"].shape == (3, 32, 16)
    assert (sample["rgb_pid"], sample["ir_pid"]) == (0, 1)


def test_identity_balanced_sampler_p_identities_k_per_modality(tmp_path: Path) -> None:
    images = training_images(write_sysu(tmp_path / "SYSU-MM01", train_ids=(1, 2, 3, 4, 8)))
    sampler = IdentityBalancedSampler(images, p=2, k=3, seed=0)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 2
    for batch in batches:
        assert len(batch) == 2 * 2 * 3
        rgb, ir = batch[:6], batch[6:]
        assert all(images[i].modality == RGB for i in rgb)
        assert all(images[i].modality == IR for i in ir)
        assert Counter(images[i].pid for i in rgb) == Counter(images[i].pid for i in ir)
        assert sorted(Counter(images[i].pid for i in rgb).values()) == [3, 3]
    with pytest.raises(DomainSSLError, match="fewer than P"):
        IdentityBalancedSampler(images, p=9, k=2)


def test_channel_views() -> None:
    torch.manual_seed(0)
    images = torch.rand(4, 3, 8, 6) * 255
    assert to_three_channels(images[:, :1]).shape == (4, 3, 8, 6)
    assert torch.equal(to_three_channels(images), images)
    gray = grayscale(images, 1.0)
    luma = LUMA[0] * images[:, 0] + LUMA[1] * images[:, 1] + LUMA[2] * images[:, 2]
    assert torch.allclose(gray, luma[:, None].expand_as(images), atol=1e-4)
    single = random_channel(images, 1.0)
    for b in range(4):
        assert torch.equal(single[b, 0], single[b, 1]) and torch.equal(single[b, 0], single[b, 2])
        assert any(torch.equal(single[b, 0], images[b, c]) for c in range(3))
    assert torch.equal(random_channel(images, 0.0), images)
    assert torch.equal(grayscale(images, 0.0), images)


def test_flip_erasing_and_resize() -> None:
    torch.manual_seed(0)
    images = torch.rand(16, 3, 12, 8) + 1
    assert torch.equal(horizontal_flip(images, 1.0), images.flip(-1))
    erased = random_erasing(images, 1.0, value=0.0)
    for b in range(16):
        rows, cols = (erased[b, 0] == 0).nonzero(as_tuple=True)
        assert len(rows) > 0
        box = erased[b, :, rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
        assert (box == 0).all()  # one filled rectangle, same on every channel
        assert len(rows) == box.shape[1] * box.shape[2]
    assert torch.equal(random_erasing(images, 0.0), images)
    resized = person_resize(torch.zeros(2, 3, 50, 20, dtype=torch.uint8), (288, 144))
    assert resized.shape == (2, 3, 288, 144) and resized.dtype == torch.uint8


def test_reid_views_standardize_and_accept_one_channel_infrared() -> None:
    config = ReidViewsConfig(flip_p=0.0, channel_p=0.0, gray_p=0.0, erase_p=0.0)
    views = ReidViews(config, [100.0, 100.0, 100.0], [50.0, 50.0, 50.0])
    infrared = torch.full((2, 1, 16, 8), 150.0)
    assert torch.allclose(views(infrared, infrared=True), torch.ones(2, 3, 16, 8))
    gray_config = config.model_copy(update={"gray_p": 1.0})
    rgb = torch.rand(2, 3, 16, 8) * 255
    out = ReidViews(gray_config, [0.0] * 3, [1.0] * 3)(rgb)
    assert torch.equal(out[:, 0], out[:, 1])
