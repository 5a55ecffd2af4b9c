"""The training sampler: shuffled blocks of consecutive positions in the aspect-ratio-sorted order.

roibatchLoader gives every block of ``batch_size`` consecutive positions (0..bs-1, bs..2bs-1, ...) one shared
target aspect ratio, so a DataLoader batch must be exactly one block. This sampler yields the positions block by
block, with the order of the full blocks shuffled each epoch, and the partial block (when batch_size does not
divide the size) last, as the original's trainval_net.py sampler did. Use it with
DataLoader(dataset, batch_size=bs, sampler=sampler(...)) and drop_last=False.
"""
import math

import torch
from torch.utils.data import Sampler


class RatioBlockSampler(Sampler):
    """Block-shuffled positions, split across distributed ranks, resumable mid-epoch.

    Args:
        train_size: number of positions (len of the roibatchLoader).
        batch_size: block size; must equal the DataLoader's batch_size.
        seed: the permutation of epoch e is drawn from a torch.Generator seeded with seed + e.
        rank, world_size: distributed split. Each rank takes every world_size-th block, so no position is used by
            two ranks; when the block count does not divide evenly, full blocks from the start of the permutation
            are repeated (as DistributedSampler pads) so every rank runs the same number of batches.
    Each epoch (world_size 1) yields every position exactly once. Without set_epoch, each new pass moves to the
    next epoch (so blocks are reshuffled every epoch, as in the original); set_epoch(e) sets it explicitly.
    state_dict()/load_state_dict() resume inside an epoch.
    """

    def __init__(self, train_size, batch_size, seed=0, rank=0, world_size=1):
        if batch_size < 1:
            raise ValueError(f'batch_size must be >= 1, got {batch_size}')
        if train_size < 1:
            raise ValueError(f'train_size must be >= 1, got {train_size}')
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f'need 0 <= rank < world_size, got rank={rank}, world_size={world_size}')
        self.num_data = int(train_size)
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.num_full = self.num_data // self.batch_size
        self.leftover = self.num_data - self.num_full * self.batch_size
        num_blocks = self.num_full + (1 if self.leftover else 0)
        self.blocks_per_rank = math.ceil(num_blocks / self.world_size)
        self.epoch = 0
        self._start = 0           # batches of this epoch already consumed (set by load_state_dict)
        self._epoch_used = False  # a pass of self.epoch has started: the next pass moves to the next epoch

    def set_epoch(self, epoch):
        """Use the permutation of ``epoch`` for the next pass."""
        self.epoch = int(epoch)
        self._epoch_used = False

    def _blocks(self, epoch):
        """This rank's blocks for ``epoch``: list of (start position, length)."""
        g = torch.Generator()
        g.manual_seed(self.seed + epoch)
        perm = torch.randperm(self.num_full, generator=g).tolist() if self.num_full else []
        blocks = [(b * self.batch_size, self.batch_size) for b in perm]
        partial = [(self.num_full * self.batch_size, self.leftover)] if self.leftover else []
        total = self.blocks_per_rank * self.world_size
        pad_from = blocks if blocks else partial
        pad = [pad_from[k % len(pad_from)] for k in range(total - len(blocks) - len(partial))]
        # The partial block goes last overall, which makes it the last block of the rank that gets it, so every
        # DataLoader batch stays one block.
        ordered = blocks + pad + partial
        return ordered[self.rank::self.world_size]

    def _positions(self, blocks):
        out = []
        for start, length in blocks:
            out.extend(range(start, start + length))
        return out

    def __iter__(self):
        # Advancing at the start of the next pass (not the end of this one) keeps self.epoch equal to the pass
        # being trained on while the DataLoader has already drained the sampler.
        if self._epoch_used:
            self.epoch += 1
            self._start = 0
        self._epoch_used = True
        blocks = self._blocks(self.epoch)[self._start:]
        self._start = 0
        return iter(self._positions(blocks))

    def __len__(self):
        return sum(length for _, length in self._blocks(self.epoch)[self._start:])

    def num_batches(self):
        """Batches this rank runs in a full epoch."""
        return self.blocks_per_rank

    def state_dict(self, position=0):
        """{'epoch', 'position'}: ``position`` = batches of the current epoch already consumed by the training loop
        (the sampler cannot count them itself: the DataLoader prefetches)."""
        return {'epoch': self.epoch, 'position': int(position)}

    def load_state_dict(self, state):
        """The next pass uses the permutation of state['epoch'] and starts after its first state['position']
        batches."""
        position = int(state['position'])
        if not 0 <= position <= self.blocks_per_rank:
            raise ValueError(f'position {position} is outside this epoch of {self.blocks_per_rank} batches')
        self.epoch = int(state['epoch'])
        self._start = position
        self._epoch_used = False


# The original's name (trainval_net.py: sampler(train_size, batch_size)).
sampler = RatioBlockSampler
