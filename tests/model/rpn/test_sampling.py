import torch

from lib.model.rpn.sampling import choose, random_rank, subsample_labels


def test_random_rank_is_a_permutation_of_the_candidates():
    torch.manual_seed(0)
    mask = torch.rand(3, 40) < 0.3
    rank, order = random_rank(mask)
    for b in range(3):
        n = int(mask[b].sum())
        assert sorted(rank[b][mask[b]].tolist()) == list(range(n))
        assert (rank[b][~mask[b]] >= n).all()
        assert mask[b][order[b][:n]].all()


def test_subsample_labels_bounds():
    torch.manual_seed(0)
    labels = torch.full((2, 1000), -1.)
    labels[0, :300] = 1      # too many positives
    labels[0, 300:900] = 0
    labels[1, :10] = 1       # few positives: negatives fill the batch
    labels[1, 10:500] = 0
    before = labels.clone()
    out = subsample_labels(labels, 256, 0.5)
    assert torch.equal(labels, before)
    assert (out[0] == 1).sum() == 128 and (out[0] == 0).sum() == 128
    assert (out[1] == 1).sum() == 10 and (out[1] == 0).sum() == 246
    # only relabelled to -1, never moved between classes
    assert ((out == 1) <= (labels == 1)).all() and ((out == 0) <= (labels == 0)).all()


def test_choose_distinct_then_repeats():
    torch.manual_seed(0)
    mask = torch.zeros(2, 20, dtype=torch.bool)
    mask[0, [1, 4, 7]] = True
    mask[1, :] = True
    idx, count = choose(mask, 8)
    assert count.tolist() == [3, 20]
    assert set(idx[0, :3].tolist()) == {1, 4, 7}            # the first draws are distinct
    assert set(idx[0].tolist()) == {1, 4, 7}                # then the same ones again
    assert len(set(idx[1].tolist())) == 8                   # enough candidates: no repeats
