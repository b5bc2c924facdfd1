"""Data order and augmentation randomness as pure functions of (seed, position), for exact resume.

A training run reads one endless stream of sample indices: epoch e is the permutation
`randperm(n)` drawn from a generator seeded with (seed, e), epochs back to back. With W
processes, process r takes stream positions r, r + W, r + 2W, ... (Detectron2's
TrainingSampler), so the processes never see the same sample in the same step and no padding
is needed. After `it` iterations of B images per process, each process has consumed exactly
it * B positions of its share, so a resumed run restarts the stream at `start = it * B` and
sees exactly the samples the interrupted run had not yet seen.

Augmentations draw from torch's global RNG. `SeededSamples` reseeds that RNG from the sample's
stream position before loading it (inside `torch.random.fork_rng`, so the training process's
own RNG, which drives RPN/RoI sampling, is untouched). A sample's flip is therefore the same
whether it is loaded in the main process or a DataLoader worker, before or after a resume.
"""
from __future__ import annotations

from typing import Iterator

import torch
from torch.utils.data import Dataset, Sampler

# Large odd multipliers spread (seed, epoch) and (seed, position) over the 63-bit seed space.
_EPOCH_MIX = 0x9E3779B97F4A7C15 % (1 << 62)
_POSITION_MIX = 0xBF58476D1CE4E5B9 % (1 << 62)


def _mix(seed: int, value: int, multiplier: int) -> int:
    return (seed * multiplier + value) % (1 << 63)


def epoch_permutation(num_samples: int, seed: int, epoch: int) -> torch.Tensor:
    g = torch.Generator()
    g.manual_seed(_mix(seed, epoch, _EPOCH_MIX))
    return torch.randperm(num_samples, generator=g)


class TrainingSampler(Sampler):
    """Endless stream of (position, dataset index) for one process.

    `position` is the global stream position, used to seed the sample's augmentations.
    Args:
        num_samples: dataset length.
        seed: same seed, same order (all processes must use the same seed).
        rank, world_size: this process's share of the stream.
        start: how many of this process's items to skip (iteration * per-process batch size).
    """

    def __init__(self, num_samples: int, *, seed: int, rank: int = 0, world_size: int = 1, start: int = 0):
        if num_samples <= 0:
            raise ValueError("cannot sample from an empty dataset")
        self.num_samples = num_samples
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.start = start

    def __iter__(self) -> Iterator[tuple[int, int]]:
        position = self.rank + self.world_size * self.start
        epoch, offset = divmod(position, self.num_samples)
        perm = epoch_permutation(self.num_samples, self.seed, epoch)
        while True:
            yield position, int(perm[offset])
            position += self.world_size
            epoch_now, offset = divmod(position, self.num_samples)
            if epoch_now != epoch:
                epoch = epoch_now
                perm = epoch_permutation(self.num_samples, self.seed, epoch)


class SeededSamples(Dataset):
    """Wraps a dataset so item (position, index) is loaded with torch's RNG seeded from
    (seed, position): augmentations become a function of the stream position only."""

    def __init__(self, dataset: Dataset, seed: int):
        self.dataset = dataset
        self.seed = seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item: tuple[int, int]):
        position, index = item
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(_mix(self.seed, position, _POSITION_MIX))
            return self.dataset[index]


def shard_indices(num_samples: int, rank: int, world_size: int) -> list[int]:
    """Evaluation split: every sample exactly once over all processes."""
    return list(range(rank, num_samples, world_size))
