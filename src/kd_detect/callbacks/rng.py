"""Exact resume: every training epoch draws from a generator state fixed by
``(seed, epoch, rank)``.

Lightning's checkpoints restore weights, optimiser, schedulers and loop counters but not
the global RNG streams (Python, NumPy, torch) that dropout, the atomic plugin's sampling
and anything else random consume -- and where exactly a checkpoint sits relative to those
draws depends on Lightning's loop internals (a resumed run re-enters the interrupted
epoch and builds iterators a fresh run would not). Reseeding every stream at the start of
each training epoch (at its first batch) from ``(seed_everything's seed, epoch, global rank)`` removes that
dependence: a run stopped after epoch k and resumed from ``last.ckpt`` ends with exactly
the weights of an uninterrupted run (with deterministic kernels), and DDP ranks draw
different dropout masks.
"""

from __future__ import annotations

import os
import random
from typing import Any

import numpy as np
import torch
from pytorch_lightning import Callback


def epoch_seed(base: int, epoch: int, rank: int) -> int:
    """A 32-bit seed derived from ``(base, epoch, rank)``."""
    return int(np.random.SeedSequence([base & 0xFFFFFFFF, epoch, rank]).generate_state(1)[0])


class EpochSeed(Callback):
    """Reseeds Python, NumPy and torch (CPU and CUDA) before the first batch of every
    training epoch (after the epoch's dataloader iterator exists: a fresh or resumed run
    creates it at different moments, and its creation draws from torch's stream).

    Args:
        seed: base seed; default the one ``seed_everything`` set (``PL_GLOBAL_SEED``), else 0.
    """

    def __init__(self, seed: int | None = None) -> None:
        self.seed = seed

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        if batch_idx != 0:
            return
        base = self.seed if self.seed is not None else int(os.environ.get("PL_GLOBAL_SEED", 0))
        s = epoch_seed(base, trainer.current_epoch, trainer.global_rank)
        random.seed(s)
        np.random.seed(s)
        torch.manual_seed(s)  # also seeds every CUDA device
