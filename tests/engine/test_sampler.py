"""Data order as a function of (seed, position): what makes resume exact."""
from itertools import islice

import torch

from maskrcnn.engine.sampler import SeededSamples, TrainingSampler, shard_indices


def take(sampler, n):
    return list(islice(iter(sampler), n))


def test_restarting_at_a_position_continues_the_same_stream():
    full = take(TrainingSampler(7, seed=3), 30)
    for start in (0, 5, 7, 13):
        assert take(TrainingSampler(7, seed=3, start=start), 30 - start) == full[start:]


def test_each_epoch_is_a_permutation_and_epochs_differ():
    stream = [i for _, i in take(TrainingSampler(10, seed=0), 30)]
    epochs = [stream[k:k + 10] for k in (0, 10, 20)]
    assert all(sorted(e) == list(range(10)) for e in epochs)
    assert epochs[0] != epochs[1]
    assert [i for _, i in take(TrainingSampler(10, seed=1), 10)] != epochs[0]


def test_ranks_split_the_stream_without_overlap():
    world, n = 3, 8
    full = take(TrainingSampler(n, seed=5), 24)
    shares = [take(TrainingSampler(n, seed=5, rank=r, world_size=world), 8) for r in range(world)]
    assert sorted(x for share in shares for x in share) == sorted(full)
    # resuming a rank at start=k skips exactly its first k items
    assert take(TrainingSampler(n, seed=5, rank=1, world_size=world, start=3), 5) == shares[1][3:8]


class RandomItems(torch.utils.data.Dataset):
    def __len__(self):
        return 4

    def __getitem__(self, index):
        return torch.rand(()).item()


def test_seeded_samples_depend_on_position_only_and_leave_global_rng_alone():
    ds = SeededSamples(RandomItems(), seed=0)
    torch.manual_seed(123)
    before = torch.get_rng_state()
    a = ds[(5, 2)]
    assert torch.equal(torch.get_rng_state(), before)
    torch.manual_seed(999)
    assert ds[(5, 2)] == a
    assert ds[(6, 2)] != a


def test_shards_cover_every_sample_once():
    shards = [shard_indices(10, r, 3) for r in range(3)]
    assert sorted(i for s in shards for i in s) == list(range(10))
