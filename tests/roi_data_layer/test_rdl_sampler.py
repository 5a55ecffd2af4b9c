"""The ratio-block sampler: contiguous blocks, each position once per epoch, distributed split, resume."""
import pytest
import torch

from lib.roi_data_layer.sampler import RatioBlockSampler, sampler


def _blocks(order, bs):
    return [order[i:i + bs] for i in range(0, len(order), bs)]


@pytest.mark.parametrize('n,bs', [(20, 4), (22, 4), (7, 1), (3, 5)])
def test_blocks_contiguous_and_each_index_once(n, bs):
    s = sampler(n, bs, seed=1)
    order = list(iter(s))
    assert sorted(order) == list(range(n))
    assert len(s) == n
    blocks = _blocks(order, bs)
    for b in blocks[:-1]:
        assert len(b) == bs
    for b in blocks:
        assert b[0] % bs == 0 and b == list(range(b[0], b[0] + len(b)))
    if n % bs:
        # the partial block is last, as in the original
        assert blocks[-1] == list(range(n - n % bs, n))


def test_epochs_reshuffle_and_set_epoch_reproduces():
    s = RatioBlockSampler(40, 4, seed=3)
    e0, e1 = list(s), list(s)
    assert e0 != e1 and sorted(e0) == sorted(e1)
    s2 = RatioBlockSampler(40, 4, seed=3)
    s2.set_epoch(1)
    assert list(s2) == e1
    s2.set_epoch(0)
    assert list(s2) == e0


@pytest.mark.parametrize('n,bs,ws', [(22, 4, 3), (24, 4, 3), (20, 4, 3), (5, 4, 2), (3, 4, 3)])
def test_distributed_split(n, bs, ws):
    per_rank = [list(RatioBlockSampler(n, bs, seed=0, rank=r, world_size=ws)) for r in range(ws)]
    num_batches = [len(_blocks(p, bs)) for p in per_rank]
    assert len(set(num_batches)) == 1, 'every rank must run the same number of batches'
    all_idx = [i for p in per_rank for i in p]
    assert set(all_idx) == set(range(n))
    full_blocks = n // bs
    num_blocks = full_blocks + (1 if n % bs else 0)
    padded = num_batches[0] * ws - num_blocks
    if padded == 0:
        assert len(all_idx) == n, 'no position may be used by two ranks'
    for p in per_rank:
        blocks = _blocks(p, bs)
        for b in blocks[:-1]:
            assert len(b) == bs
        for b in blocks:
            assert b == list(range(b[0], b[0] + len(b)))


def test_distributed_disjoint_when_blocks_divide():
    ranks = [set(RatioBlockSampler(24, 4, seed=5, rank=r, world_size=3)) for r in range(3)]
    assert not (ranks[0] & ranks[1]) and not (ranks[1] & ranks[2]) and not (ranks[0] & ranks[2])


def test_resume_mid_epoch():
    s = RatioBlockSampler(30, 4, seed=9)
    s.set_epoch(2)
    full = list(s)
    state = s.state_dict(position=3)
    assert state == {'epoch': 2, 'position': 3}
    r = RatioBlockSampler(30, 4, seed=9)
    r.load_state_dict(state)
    assert len(r) == 30 - 12
    assert list(r) == full[12:]
    # the pass after the resumed one is the next epoch, whole
    nxt = RatioBlockSampler(30, 4, seed=9)
    nxt.set_epoch(3)
    assert list(r) == list(nxt)
    with pytest.raises(ValueError, match='outside this epoch'):
        r.load_state_dict({'epoch': 0, 'position': 99})


def test_dataloader_batches_are_blocks():
    ds = torch.utils.data.TensorDataset(torch.arange(18))
    dl = torch.utils.data.DataLoader(ds, batch_size=4, sampler=sampler(18, 4, seed=0))
    batches = [b[0].tolist() for b in dl]
    assert len(batches) == 5
    for b in batches:
        assert b == list(range(b[0], b[0] + len(b))) and b[0] % 4 == 0


def test_bad_arguments():
    with pytest.raises(ValueError, match='batch_size'):
        sampler(10, 0)
    with pytest.raises(ValueError, match='rank'):
        RatioBlockSampler(10, 2, rank=2, world_size=2)
