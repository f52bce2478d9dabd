"""The LLCM reader on a generated layout: training lists, test folders, DEEN's cameras and
gallery draws, and clear errors."""

from __future__ import annotations

import os
import random
from collections import Counter
from pathlib import Path

import pytest
from reid_fixtures import write_llcm

from domainssl.data.reid import (
    IR,
    RGB,
    detect_layout,
    llcm_test_ids,
    read_llcm_test,
    read_llcm_train,
    training_images,
)
from domainssl.errors import DomainSSLError
from domainssl.transfer.reid.transfer import single_shot


def test_llcm_layout_training_lists_identities_cameras_modalities(tmp_path: Path) -> None:
    root = write_llcm(tmp_path / "LLCM", train_ids=(1, 2, 3), per_camera=2)
    assert detect_layout(root) == "llcm"
    train = training_images(root)
    assert train == read_llcm_train(root)
    assert len(train) == 3 * 2 * 2 * 2  # ids x cameras x images x modalities
    assert {im.pid for im in train} == {0, 1, 2}  # the list's labels
    assert all(im.path.is_file() for im in train)
    assert Counter((im.modality, im.cam) for im in train) == {
        (RGB, 1): 6,
        (RGB, 2): 6,
        (IR, 2): 6,
        (IR, 4): 6,
    }
    assert all(im.path.parts[-3] == ("vis" if im.modality == RGB else "nir") for im in train)
    first = train[0]
    assert first.path.name.startswith("0001_c01_") and first.pid == 0


def test_llcm_test_folders_follow_deens_cameras(tmp_path: Path) -> None:
    root = write_llcm(tmp_path / "LLCM", test_ids=(4, 5, 6), per_camera=2)
    assert llcm_test_ids(root) == [4, 5, 6]
    visible, infrared = read_llcm_test(root, RGB), read_llcm_test(root, IR)
    assert {im.modality for im in visible} == {RGB} and {im.modality for im in infrared} == {IR}
    assert Counter(im.cam for im in visible) == {1: 6, 2: 6, 3: 4}  # id 6 has no vis cam3
    # test_nir/cam3 exists (id 4) but DEEN's camera list for near-infrared has no cam3
    assert (root / "test_nir" / "cam3" / "0004").is_dir()
    assert Counter(im.cam for im in infrared) == {1: 6, 2: 6, 4: 6}
    for im in visible + infrared:
        assert im.path.parent.name == f"{im.pid:04d}"
        assert im.path.parent.parent.name == f"cam{im.cam}"
        assert im.path.name.startswith(f"{im.pid:04d}_c{im.cam:02d}_")
    listed = (root / "idx" / "test_nir.txt").read_text().split()[::2]
    assert sorted(str(im.path.relative_to(root)) for im in infrared) == sorted(listed)


def test_llcm_gallery_draws_are_the_files_deen_draws(tmp_path: Path) -> None:
    """single_shot picks what DEEN's process_gallery_llcm picks (written out here)."""
    root = write_llcm(tmp_path / "LLCM", per_camera=4)
    deen_cams = {RGB: (1, 2, 3, 4, 5, 6, 7, 8, 9), IR: (1, 2, 4, 5, 6, 7, 8, 9)}
    for modality, folder in ((RGB, "test_vis"), (IR, "test_nir")):
        pool = read_llcm_test(root, modality)
        for trial in range(3):
            random.seed(trial)
            expected = []
            for pid in sorted(f"{i:04d}" for i in llcm_test_ids(root)):
                for cam in deen_cams[modality]:
                    image_dir = root / folder / f"cam{cam}" / pid
                    if image_dir.is_dir():
                        files = sorted(f"{image_dir}/{name}" for name in os.listdir(image_dir))
                        expected.append(random.choice(files))
            gallery = single_shot(pool, trial)
            assert [str(im.path) for im in gallery] == expected
            assert len(gallery) == len({(im.pid, im.cam) for im in pool})


def test_llcm_errors_name_the_file_and_the_fix(tmp_path: Path) -> None:
    root = write_llcm(tmp_path / "LLCM")
    train_vis = root / "idx" / "train_vis.txt"
    listed = train_vis.read_text()
    train_vis.write_text(listed + "vis/0001/broken.jpg one\n")
    with pytest.raises(DomainSSLError, match=r"train_vis.txt, line 13: expected"):
        read_llcm_train(root)
    train_vis.write_text(listed)
    (root / "idx" / "train_nir.txt").unlink()
    with pytest.raises(DomainSSLError, match="train_nir.txt is missing: LLCM ships"):
        training_images(root)
    (root / "idx" / "test_id.txt").write_text("7,8")
    with pytest.raises(DomainSSLError, match="holds no image of the identities"):
        read_llcm_test(root, IR)
    (root / "idx" / "test_id.txt").unlink()
    with pytest.raises(DomainSSLError, match="test_id.txt is missing: LLCM ships it in idx/"):
        read_llcm_test(root, RGB)
