"""Samplers: what each process reads is a function of (seed, epoch, rank), shared out without
overlap, and each process's random state is reseeded per (seed, epoch, rank)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from fixtures import write_scene
from torch.utils.data import Dataset

from domainssl.config import DataConfig
from domainssl.data.datamodule import PretrainData, check_steps, train_loader
from domainssl.data.eo import SceneWindows
from domainssl.data.folder import Sample
from domainssl.data.reid import IR, RGB, ModalityPairSampler
from domainssl.data.samplers import DrawSampler, Shard, ShuffleSampler
from domainssl.data.stats import BandStats
from domainssl.errors import DomainSSLError


def test_shuffle_is_shared_out_without_overlap_and_changes_by_epoch() -> None:
    epoch = 0
    ranks = [ShuffleSampler(11, seed=3, epoch_of=lambda: epoch, shard=Shard(r, 2)) for r in (0, 1)]
    first = [list(sampler) for sampler in ranks]
    assert [len(part) for part in first] == [5, 5]  # 11 // 2 each, one left out this epoch
    assert not set(first[0]) & set(first[1])
    assert first == [list(sampler) for sampler in ranks]  # a pure function of (seed, epoch)
    epoch = 1
    assert first != [list(sampler) for sampler in ranks]
    whole = list(ShuffleSampler(11, seed=3))
    assert sorted(whole) == list(range(11))


def test_draw_keys_differ_between_ranks_and_epochs() -> None:
    epoch = 0
    samplers = [DrawSampler(8, seed=0, epoch_of=lambda: epoch, shard=Shard(r, 2)) for r in (0, 1)]
    keys = {(epoch, r): list(s) for r, s in enumerate(samplers)}
    epoch = 1
    keys |= {(epoch, r): list(s) for r, s in enumerate(samplers)}
    everything = [k for part in keys.values() for k in part]
    assert len(everything) == len(set(everything)) == 16


def test_each_rank_and_epoch_reseeds_its_own_random_stream() -> None:
    def stream(rank: int, epoch: int) -> torch.Tensor:
        iter(ShuffleSampler(4, seed=0, epoch_of=lambda: epoch, shard=Shard(rank, 2)))
        return torch.rand(3)

    assert torch.equal(stream(0, 0), stream(0, 0))
    assert not torch.equal(stream(0, 0), stream(1, 0))
    assert not torch.equal(stream(0, 0), stream(0, 1))


def test_scene_windows_are_a_function_of_the_key(tmp_path: Path) -> None:
    path = write_scene(tmp_path / "s.tif", height=128, width=128)
    windows = SceneWindows([path], size=16, length=8, seed=5)
    torch.manual_seed(0)
    first = windows[3]["image"]
    torch.manual_seed(1)  # the process's random state does not matter
    assert torch.equal(first, windows[3]["image"])
    assert not torch.equal(first, windows[4]["image"])
    assert not torch.equal(first, SceneWindows([path], size=16, length=8, seed=6)[3]["image"])


def test_modality_pairs_are_shared_out_between_ranks() -> None:
    modalities = [RGB] * 6 + [IR] * 4
    ranks = [list(ModalityPairSampler(modalities, seed=0, shard=Shard(r, 2))) for r in (0, 1)]
    assert [len(pairs) for pairs in ranks] == [3, 3]
    assert not {rgb for rgb, _ in ranks[0]} & {rgb for rgb, _ in ranks[1]}


class Chips(Dataset[Sample]):
    def __init__(self, count: int) -> None:
        self.images = torch.zeros(count, 3, 8, 8)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> Sample:
        return {"image": self.images[index], "label": -1}


def chips(count: int) -> PretrainData:
    stats = BandStats([0.0] * 3, [1.0] * 3, count, "test")
    return PretrainData(Chips(count), ["r", "g", "b"], stats, "test", None)


def test_a_small_share_per_rank_still_trains_one_batch() -> None:
    """The README demo on 2 devices: 300 chips, batch 256 -> 150 per rank, one batch each."""
    config = DataConfig(batch_size=256, num_workers=0)
    for rank in (0, 1):
        loader = train_loader(chips(300), config, shard=Shard(rank, 2))
        assert len(loader) == 1 and len(next(iter(loader))["image"]) == 150
    loader = train_loader(chips(600), config, shard=Shard(0, 2))  # 300 per rank: drop the tail
    assert len(loader) == 1 and len(next(iter(loader))["image"]) == 256


def test_a_process_without_a_training_step_stops_clearly() -> None:
    config = DataConfig(batch_size=8, num_workers=0)
    loader = train_loader(chips(3), config, shard=Shard(0, 2))  # one sample per process
    with pytest.raises(DomainSSLError, match="no training step"):
        check_steps(loader, 1.0, Shard(0, 2))
    with pytest.raises(DomainSSLError, match="limit_train_batches=0.5"):
        check_steps(train_loader(chips(6), config), 0.5, Shard())
    check_steps(train_loader(chips(6), config), 1.0, Shard())
