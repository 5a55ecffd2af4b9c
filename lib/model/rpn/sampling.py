"""Batched random subsampling shared by the anchor-target and proposal-target layers.

Everything works on whole [B, N] masks at once: random scores plus a sort give each candidate a random
rank, and comparisons with per-image counts (tensors) decide what is kept. There is no Python loop over
boxes and no host synchronisation, so the layers stay asynchronous on a GPU.
"""
import torch


def random_rank(mask, generator=None):
    """A random order of the True entries of each row.

    Args:
        mask: [B, N] bool candidates.
        generator: optional torch.Generator.
    Returns:
        rank [B, N] long: the True entries of row b get a random permutation of 0..count_b-1; the False
        entries get ranks >= count_b (so ``rank < k`` never selects them).
        order [B, N] long: the column indices sorted by rank (True entries first, in random order).
    """
    scores = torch.rand(mask.shape, device=mask.device, generator=generator)
    # candidates get scores in [0, 1), the others 2, so an ascending sort puts every candidate first
    scores = torch.where(mask, scores, torch.full_like(scores, 2.0))
    order = scores.argsort(dim=1)
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(mask.size(1), device=mask.device).expand_as(order))
    return rank, order


def subsample_labels(labels, batch_size_per_image, positive_fraction, generator=None):
    """Keep at most ``int(positive_fraction * batch_size_per_image)`` positives per image and fill the rest of
    the batch with negatives; the surplus become -1 (ignored).

    Args:
        labels: [B, N] with 1 positive, 0 negative, -1 ignored.
    Returns:
        a new [B, N] tensor (the input is not modified), same dtype.
    """
    num_fg = int(positive_fraction * batch_size_per_image)
    pos = labels == 1
    neg = labels == 0
    pos_rank, _ = random_rank(pos, generator)
    keep_pos = pos & (pos_rank < num_fg)
    num_bg = batch_size_per_image - keep_pos.sum(dim=1, keepdim=True)  # [B, 1]
    neg_rank, _ = random_rank(neg, generator)
    keep_neg = neg & (neg_rank < num_bg)
    out = torch.full_like(labels, -1)
    out = out.masked_fill(keep_pos, 1)
    return out.masked_fill(keep_neg, 0)


def choose(mask, k, generator=None):
    """Draw k column indices per row from the True entries of ``mask``.

    The first min(k, count) draws are distinct (a random permutation); when a row has fewer than k
    candidates the permutation is repeated, so the remaining draws are repeats (sampling with replacement
    only where it cannot be avoided).

    Args:
        mask: [B, N] bool candidates.
        k: number of draws per row.
    Returns:
        idx [B, k] long column indices (meaningless, but valid, in rows without candidates);
        count [B] long number of candidates per row.
    """
    count = mask.sum(dim=1)
    _, order = random_rank(mask, generator)
    slot = torch.arange(k, device=mask.device).unsqueeze(0)
    src = slot % count.clamp(min=1).unsqueeze(1)
    return order.gather(1, src), count
