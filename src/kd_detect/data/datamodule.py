"""``FeatureDataModule``: :class:`~kd_detect.data.feature_data.FeatureData` (subsets,
datasets and loaders of a format-v1 feature file; all the rules are described there) as a
``LightningDataModule`` for ``kd-detect fit/validate/test`` (DESIGN.md §2, §4, §5): its
hooks return ``FeatureData.loader(stage)``, the ``val_subset="auto"`` note is printed on
rank zero only, and ``teardown`` closes the file."""

from __future__ import annotations

import sys

import pytorch_lightning as pl
from pytorch_lightning.utilities.rank_zero import rank_zero_only
from torch.utils.data import DataLoader

from .feature_data import AUTO, AUTO_SHARE, VALIDATION, FeatureData, Subset, fixed_share, fold_of

__all__ = ["AUTO", "AUTO_SHARE", "VALIDATION", "FeatureDataModule", "Subset", "fixed_share", "fold_of"]


@rank_zero_only
def _announce(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class FeatureDataModule(FeatureData, pl.LightningDataModule):
    """:class:`~kd_detect.data.feature_data.FeatureData` (same arguments) with the Lightning hooks."""

    def announce(self, message: str) -> None:
        _announce(message)

    def setup(self, stage: str) -> None:
        """Every rank trains in rank zero's order: ``seed=None`` follows each process's
        ``seed_everything``, which ranks started apart (e.g. by ``torchrun`` with
        ``seed_everything: true``) choose independently, and a distributed sampler needs one
        seed on all ranks to split the videos without overlap."""
        trainer = getattr(self, "trainer", None)
        if stage == "fit" and self._seed is None and trainer is not None and trainer.world_size > 1:
            self._seed = int(trainer.strategy.broadcast(self.seed, src=0))

    def train_dataloader(self) -> DataLoader:
        return self.loader("train")

    def val_dataloader(self) -> DataLoader:
        return self.loader("val")

    def test_dataloader(self) -> DataLoader:
        return self.loader("test")

    def predict_dataloader(self) -> DataLoader:
        return self.loader("predict")

    def teardown(self, stage: str) -> None:
        self.close()
