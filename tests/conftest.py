"""Shared test fixtures.

``synthetic_h5``: a tiny synthetic feature file (format v1, DESIGN.md §4) written once per
session by ``data_prep.synthetic``: 16 videos (12 training / 4 testing), 6 classes,
T in [24, 64], modalities rgb (16-d), flow (8-d), pose (8-d), float16.
``make_synthetic_h5(**options)`` writes (and caches per options) other variants.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import pytest
import torch

torch.set_num_threads(1)  # 2 shared CPU cores: keep every test single-threaded

from data_prep.synthetic import TINY as SYNTHETIC_SMALL  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def _verdict_cache(tmp_path_factory) -> None:
    """Cached validation verdicts (and any other kd_detect cache) go to a session folder,
    never to the user's ~/.cache; subprocesses inherit it."""
    import os

    os.environ["KD_DETECT_CACHE_DIR"] = str(tmp_path_factory.mktemp("kd_cache"))


@pytest.fixture(scope="session")
def make_synthetic_h5(tmp_path_factory) -> Callable[..., Path]:
    """Factory ``make(seed=0, dtype="float16", **options) -> Path``; files are cached per arguments."""
    from data_prep.synthetic import generate

    root = tmp_path_factory.mktemp("synthetic")
    cache: dict[tuple, Path] = {}

    def make(seed: int = 0, dtype: str = "float16", **options) -> Path:
        opts = {**SYNTHETIC_SMALL, **options}
        key = (seed, dtype, tuple(sorted(opts.items())))
        if key not in cache:
            cache[key] = generate(root / f"synthetic_{len(cache)}.h5", seed=seed, dtype=dtype, **opts)
        return cache[key]

    return make


@pytest.fixture(scope="session")
def synthetic_h5(make_synthetic_h5) -> Path:
    """The default tiny synthetic file (do not modify it: copy it first)."""
    return make_synthetic_h5()

