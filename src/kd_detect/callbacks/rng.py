"""Exact resume: carry the random-number generators through checkpoints.

Lightning's checkpoints restore weights, optimiser, schedulers and loop counters but not
the global RNG streams (Python, NumPy, torch CPU and CUDA) that dropout, the atomic
plugin's sampling and anything else random consume. With this callback, a run stopped
after epoch k and resumed from ``last.ckpt`` continues with exactly the generator state
it would have had, so it ends with the same weights as an uninterrupted run (with
deterministic kernels). Each rank stores and restores its own state.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch
from pytorch_lightning import Callback


def _numpy_state() -> tuple:
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return (str(name), torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached))


class RNGState(Callback):
    """Saves the RNG states in every checkpoint and restores them on resume."""

    @property
    def state_key(self) -> str:
        return "RNGState"

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {
            "python": random.getstate(),
            # as plain values/tensors so ``torch.load(weights_only=True)`` accepts the checkpoint
            "numpy": _numpy_state(),
            "torch": torch.get_rng_state(),
        }
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        # Lightning restores callback states right before the fit loop creates the epoch's
        # dataloader iterator (which draws a base seed from torch's stream), matching the
        # order of an uninterrupted run: checkpoint saved -> next iterator -> batches.
        random.setstate(state["python"])
        name, keys, pos, has_gauss, cached = state["numpy"]
        np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
        torch.set_rng_state(state["torch"])
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])
