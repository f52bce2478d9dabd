"""SYSU-MM01's official gallery draws (``exp/rand_perm_cam.mat``) on generated files in the
data set's structure, and the seeded draws that are used without it."""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import pytest
from reid_fixtures import write_rand_perm_cam, write_sysu
from scipy.io import loadmat, savemat

from domainssl.data.reid import PersonImage, read_sysu, read_sysu_draws
from domainssl.errors import DomainSSLError
from domainssl.transfer.reid.transfer import single_shot, sysu_gallery

TEST_IDS = [5, 6, 7]


def names(gallery: list[PersonImage]) -> list[str]:
    return [f"cam{im.cam}/{im.pid:04d}/{im.path.name}" for im in gallery]


def test_file_in_the_official_structure_picks_the_images_its_permutations_name(
    tmp_path: Path,
) -> None:
    root = write_sysu(tmp_path / "SYSU-MM01", per_camera=4)
    fixed = {(1, 5): [[3, 1, 4, 2], [2, 4, 1, 3], [4, 3, 2, 1]]}
    path = write_rand_perm_cam(root, trials=3, fixed=fixed)
    stored = loadmat(str(path))["rand_perm_cam"]  # what MATLAB's save would give scipy
    assert stored.shape == (6, 1) and stored[0, 0].shape == (7, 1)  # cam1: identities 1..7
    assert stored[3, 0].shape == (6, 1)  # cam4: identity 7 has no images there
    assert stored[0, 0][4, 0].dtype == np.uint8 and stored[0, 0][4, 0].shape == (3, 4)
    draws = read_sysu_draws(path)
    assert draws.trials == 3 and sorted(draws.cams) == [1, 2, 3, 4, 5, 6]
    pool = read_sysu(root, TEST_IDS, (1, 2, 4, 5))
    picked = [names(draws.gallery(pool, trial)) for trial in range(3)]
    # the hand-built rows of cam1/0005 name images 3, 2 and 4 (1-based, file order)
    assert [gallery[0] for gallery in picked] == [
        "cam1/0005/0003.jpg",
        "cam1/0005/0002.jpg",
        "cam1/0005/0004.jpg",
    ]
    for trial, gallery in enumerate(picked):  # every other pick: row `trial`, first entry
        expected = [
            f"cam{cam}/{pid:04d}/{int(stored[cam - 1, 0][pid - 1, 0][trial, 0]):04d}.jpg"
            for pid in TEST_IDS
            for cam in (1, 2, 4, 5)
            if not (pid == 7 and cam in (4, 5))
        ]
        assert gallery == expected
    indoor = draws.gallery(read_sysu(root, TEST_IDS, (1, 2)), 1)
    assert names(indoor) == [name for name in picked[1] if name[3] in "12"]


def test_official_draws_replace_the_seeded_ones_when_the_file_is_there(tmp_path: Path) -> None:
    root = write_sysu(tmp_path / "SYSU-MM01", per_camera=5)
    pool = read_sysu(root, TEST_IDS, (1, 2, 4, 5))
    draw, description = sysu_gallery(root, trials=10)
    assert draw is single_shot and description == "seeded single-shot, seed = trial"
    write_rand_perm_cam(root, trials=4, seed=3)
    draw, description = sysu_gallery(root, trials=4)
    assert description == "official rand_perm_cam.mat"
    assert draw(pool, 2) == read_sysu_draws(root / "exp" / "rand_perm_cam.mat").gallery(pool, 2)
    with pytest.raises(DomainSSLError, match=r"holds 4 trials.*--trials 4 or fewer"):
        sysu_gallery(root, trials=5)


def test_seeded_draws_are_the_files_agw_and_deen_draw(tmp_path: Path) -> None:
    """single_shot picks what AGW's / DEEN's process_gallery_sysu picks (written out here)."""
    root = write_sysu(tmp_path / "SYSU-MM01", per_camera=6)
    pool = read_sysu(root, TEST_IDS, (1, 2, 4, 5))
    for trial in range(3):
        random.seed(trial)
        expected = []
        for pid in sorted(f"{i:04d}" for i in TEST_IDS):
            for cam in ("cam1", "cam2", "cam4", "cam5"):
                folder = root / cam / pid
                if folder.is_dir():
                    files = sorted(f"{folder}/{name}" for name in os.listdir(folder))
                    expected.append(random.choice(files))
        assert [str(im.path) for im in single_shot(pool, trial)] == expected
    assert single_shot(pool, 0) != single_shot(pool, 1)


def test_files_that_are_not_the_official_one_are_refused_with_the_fix(tmp_path: Path) -> None:
    root = write_sysu(tmp_path / "SYSU-MM01", per_camera=3)
    path = root / "exp" / "rand_perm_cam.mat"
    path.write_text("not a MAT file")
    with pytest.raises(DomainSSLError, match="cannot be read as a MATLAB file.*remove it"):
        read_sysu_draws(path)
    savemat(str(path), {"perm": np.zeros((2, 2))})
    with pytest.raises(DomainSSLError, match=r"found: perm\).*wuancong/SYSU-MM01"):
        read_sysu_draws(path)
    savemat(str(path), {"rand_perm_cam": np.zeros((6, 1))})  # numbers, not cells
    with pytest.raises(DomainSSLError, match="cell array of the 6 cameras"):
        read_sysu_draws(path)
    cams = np.empty((6, 1), dtype=object)
    for cam in range(6):
        cell = np.empty((1, 1), dtype=object)
        cell[0, 0] = np.arange(4, dtype=np.uint8).reshape(1, 2, 2)  # 3-D, not trials x images
        cams[cam, 0] = cell
    savemat(str(path), {"rand_perm_cam": cams})
    with pytest.raises(DomainSSLError, match=r"rand_perm_cam\{1\}.*not a \(trials x images\)"):
        read_sysu_draws(path)


def test_a_file_of_another_copy_of_the_data_is_refused(tmp_path: Path) -> None:
    root = write_sysu(tmp_path / "SYSU-MM01", per_camera=3)
    path = write_rand_perm_cam(root, trials=2)
    (root / "cam2" / "0006" / "0003.jpg").unlink()  # this copy has 2 images there, not 3
    pool = read_sysu(root, TEST_IDS, (1, 2))
    draws = read_sysu_draws(path)
    with pytest.raises(DomainSSLError, match=r"cam2/0006 holds 2 images, the file a perm"):
        draws.gallery(pool, 0)
    with pytest.raises(DomainSSLError, match="holds 2 trials; trial 3"):
        draws.gallery(pool, 2)
