"""run_trials: which query and gallery sets each protocol evaluates, trial by trial: SYSU-MM01
with and without its official draws file, and LLCM's two directions."""

from __future__ import annotations

from pathlib import Path
from typing import cast

import pytest
import torch
import torch.nn.functional as F
from reid_fixtures import write_llcm, write_rand_perm_cam, write_sysu

from domainssl.data.reid import IR, RGB, PersonImage, read_llcm_test, read_sysu, read_sysu_draws
from domainssl.errors import DomainSSLError
from domainssl.transfer.reid.transfer import Encoder, run_trials, single_shot


class Recorder:
    """Stands in for the encoder: a person's feature is its identity, and every list of
    images it is asked for is kept (per trial: the queries, then the gallery)."""

    def __init__(self) -> None:
        self.calls: list[list[PersonImage]] = []

    def __call__(self, images: list[PersonImage]) -> torch.Tensor:
        self.calls.append(list(images))
        pids = torch.tensor([item.pid for item in images])
        return F.normalize(F.one_hot(pids, 16).float(), dim=1)  # (N, 16)

    def galleries(self) -> list[list[PersonImage]]:
        return self.calls[1::2]

    def queries(self) -> list[list[PersonImage]]:
        return self.calls[::2]


def trials_of(root: Path, layout: str, protocol: str, trials: int) -> tuple[Recorder, list, dict]:
    recorder = Recorder()
    results, sets = run_trials(root, layout, protocol, trials, cast(Encoder, recorder))
    return recorder, results, sets


def test_sysu_trials_use_the_official_draws_when_the_file_is_there(tmp_path: Path) -> None:
    root = write_sysu(tmp_path / "SYSU-MM01", per_camera=4)
    pool = read_sysu(root, [5, 6, 7], (1, 2, 4, 5))
    recorder, results, sets = trials_of(root, "sysu", "all", 3)
    assert sets["gallery_draw"] == "seeded single-shot, seed = trial"
    assert recorder.galleries() == [single_shot(pool, t) for t in range(3)]
    path = write_rand_perm_cam(root, trials=3, seed=1)
    recorder, results, sets = trials_of(root, "sysu", "all", 3)
    assert sets == {"identities": 3, "gallery_draw": "official rand_perm_cam.mat"}
    draws = read_sysu_draws(path)
    assert recorder.galleries() == [draws.gallery(pool, t) for t in range(3)]
    assert recorder.galleries() != [single_shot(pool, t) for t in range(3)]
    assert [r["gallery"] for r in results] == [10, 10, 10] and results[0]["rank1"] == 1.0
    indoor, _, _ = trials_of(root, "sysu", "indoor", 2)
    assert indoor.galleries()[1] == draws.gallery(read_sysu(root, [5, 6, 7], (1, 2)), 1)
    with pytest.raises(DomainSSLError, match="holds 3 trials, fewer than --trials 4"):
        trials_of(root, "sysu", "all", 4)


@pytest.mark.parametrize(("protocol", "query_modality"), [("v2i", RGB), ("i2v", IR)])
def test_llcm_directions_query_one_modality_against_single_shot_other(
    tmp_path: Path, protocol: str, query_modality: int
) -> None:
    root = write_llcm(tmp_path / "LLCM", per_camera=2)
    recorder, results, sets = trials_of(root, "llcm", protocol, 3)
    assert sets == {
        "identities": 3,
        "gallery_draw": "seeded single-shot, seed = trial (DEEN's draws)",
    }
    gallery_modality = IR if query_modality == RGB else RGB
    pool = read_llcm_test(root, gallery_modality)
    assert all(q == read_llcm_test(root, query_modality) for q in recorder.queries())
    assert recorder.galleries() == [single_shot(pool, t) for t in range(3)]
    assert len({tuple(g) for g in recorder.galleries()}) == 3  # redrawn in each trial
    groups = 9 if gallery_modality == IR else 8  # 3 ids x 3 cams; one lacks vis cam3
    queries = 2 * (8 if query_modality == RGB else 9)
    assert [(r["gallery"], r["queries"]) for r in results] == [(groups, queries)] * 3
    assert all(r["rank1"] == 1.0 and r["mAP"] == 1.0 for r in results)
