"""``FeatureData``: the subsets, datasets and loaders of a format-v1 feature file, without
Lightning (DESIGN.md §2, §4, §5). :class:`~kd_detect.data.datamodule.FeatureDataModule`
is this plus the Lightning hooks; ``kd-detect predict`` uses it as it is, so predicting
needs neither Lightning nor what Lightning imports.

* ``__init__`` reads only the header (``num_classes``, ``classes``, ``modality_dims`` are
  there for the CLI to link into the model) and refuses, before any training, a missing
  / corrupt / unknown-format file, an absent modality or an empty subset.
* Training: shuffled (a :class:`~torch.utils.data.DistributedSampler`, also with one
  process), videos longer than ``max_steps`` cropped to a window whose offset depends only
  on ``(seed, epoch, index)``. ``seed=None`` (the default) is the fit's ``seed_everything``
  (``PL_GLOBAL_SEED``, the same on every rank; 0 when unseeded), so a training seed varies
  the order of the videos and the crops as well as the initial weights and the dropout.
* Evaluation (val / test / predict): whole videos, no shuffle, **sorted by length,
  longest first** within the subset (less padding; a memory problem shows on the first
  batch; the metrics do not depend on order), split over ranks without padding so every
  video is evaluated exactly once (DESIGN.md §5).
* ``train_fraction < 1`` trains on a fixed share of the training videos (data-efficiency
  studies): the videos whose SHA-1 of the id ranks lowest, so the choice is the same for
  every seed, process and run, and a smaller share is a subset of a larger one.
* ``val_subset="auto"`` (the default): the file's ``validation`` subset when it has one,
  otherwise 15 % of the training videos (lowest SHA-1 of the id, as ``train_fraction``),
  held out of training; the choice is announced in one line (on rank zero).
* ``unlabelled_subset`` (e.g. ``"unlabelled"``, the format's subset of videos without
  annotations) adds that subset's videos to the training stage **without their labels**:
  they are never read, even when the file has them, and the batch marks the videos
  (``meta["labelled"]``, ``kd_detect.data.batch``). Only a student's distillation losses
  learn from them; every other module refuses them. The training-set standardisation
  statistics include them (they need no labels). ``folds`` and ``train_fraction`` choose
  among the labelled videos only.
* h5py handles are opened lazily per process; ``preload=True`` reads the needed subsets
  into RAM once and gives the same batches as lazy reading.
"""

from __future__ import annotations

import hashlib
import math
import os
import sys
from collections import Counter
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from .dataset import EpochDistributedSampler, FeatureDataset, UnrepeatedDistributedSampler, VideoCollate
from .format import UNLABELLED, FeatureFile, FeatureFileError
from .verdict import ensure_valid

Subset = str | list[str]
AUTO = "auto"
VALIDATION = "validation"
AUTO_SHARE = 0.15  # share of training held out for validation when the file has no validation subset


def _subset_name(subset: Subset | None) -> str:
    if subset is None:
        return "<all videos>"
    return repr(subset) if isinstance(subset, str) else repr(list(subset))


def fold_of(video_id: str, folds: int) -> int:
    """The cross-fitting fold (``0 .. folds-1``) of ``video_id``: its SHA-1 modulo ``folds``.
    A property of the id alone, so the same in every seed, process and run, and the folds of
    the fold teachers of one cross-fitted teacher partition any training subset."""
    return int(hashlib.sha1(video_id.encode()).hexdigest(), 16) % folds


def fixed_share(video_ids: list[str], fraction: float) -> list[str]:
    """``ceil(fraction * n)`` of ``video_ids`` (at least one), in their original order: those
    whose SHA-1 of the id ranks lowest. Independent of seeds and processes, and nested: the
    share for a smaller fraction is contained in the share for a larger one."""
    count = max(1, math.ceil(fraction * len(video_ids) - 1e-9))
    ranked = sorted(video_ids, key=lambda v: hashlib.sha1(v.encode()).hexdigest())
    chosen = set(ranked[:count])
    return [v for v in video_ids if v in chosen]


class FeatureData:
    """Host-layout batches ``{modality: (B, T, D_m) stored dtype, labels: (B, T, C) uint8,
    mask: (B, T), meta, layout}`` from ``path`` (``kd_detect.data.batch``); the module turns
    them into ``(B, D, T)`` float32 after the transfer (``to_model_layout``).

    ``modalities=None`` loads every modality of the file. ``predict_subset=None`` predicts
    every video in the file. ``eval_batch_size`` defaults to ``batch_size``.
    ``pin_memory=None`` pins the host batches when a GPU is present.
    ``require_labels=False`` gives zero labels for videos without a ``labels`` field (and
    defers the empty-subset error of train/val/test to when that stage asks for data, so a
    label-free file can be predicted without naming its subsets).
    ``validate=True`` first checks the whole file with the rules of ``kd-detect check``
    (:func:`~kd_detect.data.verdict.ensure_valid`, verdict cached per file identity) and
    raises :class:`~kd_detect.errors.DataValidationError` naming the first problem(s).
    ``folds=K`` (> 1) with ``fold=k`` trains on the training videos outside fold ``k``
    (:func:`fold_of`): the K runs ``fold=0..K-1`` are the fold teachers of a cross-fitted
    teacher (``kd_detect.modules.cross_fit``). Validation and test are unchanged. The videos
    a model trained on are recorded in its checkpoint (:attr:`training_videos`).
    """

    def __init__(
        self,
        path: str,
        modalities: list[str] | None = None,
        train_subset: Subset = "training",
        val_subset: Subset = "auto",
        test_subset: Subset = "testing",
        predict_subset: Subset | None = None,
        batch_size: int = 8,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        max_steps: int | None = None,
        preload: bool = False,
        require_labels: bool = True,
        pin_memory: bool | None = None,
        seed: int | None = None,
        train_fraction: float = 1.0,
        validate: bool = True,
        folds: int = 1,
        fold: int = 0,
        unlabelled_subset: Subset | None = None,
    ) -> None:
        super().__init__()  # FeatureDataModule: the LightningDataModule's
        # No save_hyperparameters(): Lightning refuses to log when a key (seed, modalities...)
        # is in both the module's and the datamodule's hparams with different values; the
        # CLI saves the whole config anyway.
        file_path = Path(path)
        if not file_path.exists():
            raise FeatureFileError(
                f"{file_path}: no such feature file. Create it with `make data DATASET={file_path.stem}` "
                f"(writes data/{file_path.stem}.h5) or set --data.path to an existing file"
            )
        for name, value in (("batch_size", batch_size), ("eval_batch_size", eval_batch_size),
                            ("max_steps", max_steps)):
            if value is not None and int(value) < 1:
                raise ValueError(f"FeatureDataModule: {name} must be >= 1, got {value}")
        if num_workers < 0:
            raise ValueError(f"FeatureDataModule: num_workers must be >= 0, got {num_workers}")
        if not 0.0 < float(train_fraction) <= 1.0:
            raise ValueError(f"FeatureDataModule: train_fraction must be in (0, 1], got {train_fraction}")
        if int(folds) < 1 or not 0 <= int(fold) < int(folds):
            raise ValueError(f"FeatureDataModule: folds must be >= 1 and fold in [0, folds), got folds={folds}, fold={fold}")
        self.feature_file = FeatureFile(file_path)
        ff = self.feature_file
        if modalities is not None and len(modalities) == 0:
            raise ValueError(f"{file_path}: modalities=[] selects nothing; the file has {ff.modalities}")
        self.modalities = list(ff.modalities) if modalities is None else list(modalities)
        absent = [m for m in self.modalities if m not in ff.modalities]
        if absent:
            raise FeatureFileError(
                f"{file_path}: modalities {absent} requested but the file has only {ff.modalities}"
            )
        no_dim = [m for m in self.modalities if m not in ff.modality_dims]
        if no_dim:
            raise FeatureFileError(
                f"{file_path}: cannot read the dims of modalities {no_dim} (empty file or first video lacks "
                f"them); run `kd-detect check {file_path}`"
            )
        if validate:
            # the rules of `kd-detect check`, once per file content (cached verdict): a bad
            # video fails here, before training, not in a collate or after the fit
            ensure_valid(file_path, require_labels=require_labels)
        self.classes: list[str] = list(ff.classes)
        self.num_classes: int = ff.num_classes
        self.modality_dims: dict[str, int] = {m: ff.modality_dims[m] for m in self.modalities}
        self.path = file_path
        self.train_subset, self.val_subset, self.test_subset = train_subset, val_subset, test_subset
        self.predict_subset = predict_subset
        self.batch_size = int(batch_size)
        self.eval_batch_size = int(eval_batch_size or batch_size)
        self.num_workers = int(num_workers)
        self.max_steps = max_steps
        self.preload = preload
        self.require_labels = require_labels
        # Pinned host batches transfer asynchronously; only worth it (and only possible) with a GPU.
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else bool(pin_memory)
        self._seed = None if seed is None else int(seed)
        self._ids: dict[str, list[str]] = {}
        self._empty: dict[str, FeatureFileError] = {}
        held_out: list[str] = []
        self._val_note: str | None = None  # announced when the validation data are first built
        if require_labels:  # the format's subset of videos without annotations is never labelled data
            for stage, subset in (("train", train_subset), ("val", val_subset), ("test", test_subset)):
                names = [subset] if isinstance(subset, str) else list(subset)
                if UNLABELLED in names:
                    raise FeatureFileError(
                        f"{file_path}: {stage}_subset={_subset_name(subset)}: subset {UNLABELLED!r} holds videos "
                        "without annotations (docs/format.md); a student distils on them with "
                        f"unlabelled_subset={UNLABELLED!r}, and predict reads them")
        if val_subset == AUTO:
            val_subset, held_out = self._auto_validation(ff, train_subset)
            self.val_subset = val_subset
        for stage, subset in (("train", train_subset), ("val", val_subset), ("test", test_subset),
                              ("predict", predict_subset)):
            ids = held_out if stage == "val" and held_out else ff.videos_in(subset)
            if stage == "train" and held_out:
                ids = [v for v in ids if v not in set(held_out)] or ids
            if not ids:
                counts = dict(sorted(Counter(ff.subsets.values()).items()))
                error = FeatureFileError(
                    f"{file_path}: {stage}_subset={_subset_name(subset)} selects no video; "
                    f"subsets in the file (videos): {counts or 'none, the file has no videos'}"
                )
                # A label-free file meant for prediction need not have training/testing subsets:
                # with require_labels=False the error is raised when that stage asks for data.
                if require_labels or stage == "predict":
                    raise error
                self._empty[stage] = error
            if stage == "train" and int(folds) > 1 and ids:
                kept = [v for v in ids if fold_of(v, int(folds)) != int(fold)]
                if not kept:
                    raise FeatureFileError(
                        f"{file_path}: train_subset={_subset_name(train_subset)} with folds={folds}, fold={fold} leaves "
                        f"no training video: all {len(ids)} are in fold {fold}; use fewer folds"
                    )
                ids = kept
            if stage == "train" and train_fraction < 1.0 and ids:
                ids = fixed_share(ids, train_fraction)
            self._ids[stage] = ids
        self.unlabelled_subset = unlabelled_subset
        self._unlabelled: list[str] = []
        if unlabelled_subset is not None:
            extra = ff.videos_in(unlabelled_subset)
            if not extra:
                counts = dict(sorted(Counter(ff.subsets.values()).items()))
                raise FeatureFileError(f"{file_path}: unlabelled_subset={_subset_name(unlabelled_subset)} selects no "
                                       f"video; subsets in the file (videos): {counts}")
            taken = set(self._ids.get("train", [])) | set(self._ids.get("val", [])) | set(self._ids.get("test", []))
            clash = [v for v in extra if v in taken]
            if clash:
                raise FeatureFileError(
                    f"{file_path}: unlabelled_subset={_subset_name(unlabelled_subset)} shares {len(clash)} videos "
                    f"(e.g. {clash[0]!r}) with the training, validation or testing subsets; it must name others")
            self._unlabelled = extra
            if "train" in self._ids:
                self._ids["train"] = self._ids["train"] + extra
        self.train_fraction = float(train_fraction)
        self.folds, self.fold = int(folds), int(fold)
        self._datasets: dict[str, FeatureDataset] = {}

    # ------------------------------------------------------------------ helpers
    @property
    def training_videos(self) -> list[str]:
        """The ids of the videos the training stage reads (after the validation hold-out,
        ``folds``/``fold`` and ``train_fraction``; the unlabelled ones too); empty for a
        label-free file."""
        return list(self._ids.get("train", []))

    @property
    def unlabelled_videos(self) -> list[str]:
        """The training videos whose labels are not read (``unlabelled_subset``)."""
        return list(self._unlabelled)

    def feature_statistics(self, modalities: list[str] | None = None) -> dict:
        """``{modality: (mean, std)}`` per dimension over every step of the training videos
        (``kd_detect.data.statistics``); the same on every rank (no shard)."""
        from kd_detect.data.statistics import feature_moments

        if "train" in self._empty:
            raise self._empty["train"]
        return feature_moments(self.feature_file, self._ids["train"], list(modalities or self.modalities))

    def _auto_validation(self, ff: FeatureFile, train_subset: Subset) -> tuple[Subset, list[str]]:
        """``val_subset: auto``: ``(subset, [])`` with the file's ``validation`` subset when it
        has one, else ``(train_subset, held-out ids)``: a fixed share (:data:`AUTO_SHARE`, by
        SHA-1 of the id, :func:`fixed_share`) of the training videos, removed from training
        (kept in it only when training has a single video). Announced once (rank zero), when
        the validation data are first built (not by predict / cache-teacher)."""
        if ff.videos_in(VALIDATION):
            self._val_note = (f"{self.path}: val_subset=auto -> the file's '{VALIDATION}' subset "
                              f"({len(ff.videos_in(VALIDATION))} videos)")
            return VALIDATION, []
        train = ff.videos_in(train_subset)
        if not train:
            return VALIDATION, []  # the train stage reports the empty subset
        held = fixed_share(train, AUTO_SHARE)
        overlap = " (the only training video: validation overlaps training)" if len(train) < 2 else ""
        self._val_note = (f"{self.path}: val_subset=auto -> no '{VALIDATION}' subset; validating on {len(held)} "
                          f"of {len(train)} {_subset_name(train_subset)} videos held out by SHA-1 of the id "
                          f"({AUTO_SHARE:.0%}){overlap}")
        return train_subset, held

    def _world(self) -> tuple[int, int]:
        """``(world_size, global_rank)`` of the attached trainer, else ``(1, 0)``."""
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return 1, 0
        return int(trainer.world_size), int(trainer.global_rank)

    def dataset(self, stage: str) -> FeatureDataset:
        """The dataset of ``stage`` (train / val / test / predict), built once."""
        if stage in self._empty:
            raise self._empty[stage]
        if stage not in self._datasets:
            if stage == "val" and self._val_note:
                self.announce(self._val_note)
            ids = self._ids[stage]
            train = stage == "train"
            if not train:
                lengths = self.feature_file.lengths
                ids = sorted(ids, key=lambda v: -lengths[v])  # stable: file order among equals
            self._datasets[stage] = FeatureDataset(
                self.feature_file,
                ids,
                self.modalities,
                max_steps=self.max_steps if train else None,
                seed=self.seed,
                require_labels=self.require_labels,
                preload=self.preload,
                unlabelled=self._unlabelled if train else (),
            )
        return self._datasets[stage]

    @property
    def seed(self) -> int:
        """The seed of the training order and crops: the one given, else the fit's
        ``seed_everything`` (read when the training data are built, after the CLI seeded),
        else 0. Before 2026-12-07 the default was 0 whatever the fit's seed, so the
        training seeds of a comparison shared one order of the videos."""
        if self._seed is not None:
            return self._seed
        return int(os.environ.get("PL_GLOBAL_SEED", 0))

    def announce(self, message: str) -> None:
        """One line on stderr (the Lightning DataModule prints it on rank zero only)."""
        print(message, file=sys.stderr, flush=True)

    def loader(self, stage: str) -> DataLoader:
        """The DataLoader of ``stage`` (train / val / test / predict), as described above."""
        dataset = self.dataset(stage)
        world, rank = self._world()
        if stage == "train":
            sampler = EpochDistributedSampler(
                dataset, num_replicas=world, rank=rank, shuffle=True, seed=self.seed, drop_last=False
            )
            batch_size = self.batch_size
        else:
            sampler = UnrepeatedDistributedSampler(dataset, num_replicas=world, rank=rank)
            batch_size = self.eval_batch_size
        if self.num_workers > 0:
            # never fork with an open HDF5 handle: workers open their own (FeatureFile reopens per pid)
            self.feature_file.close()
        return DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            collate_fn=VideoCollate(self.num_classes),
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=self.pin_memory,
            drop_last=False,
        )

    def close(self) -> None:
        """Close this process's handle of the file (reopened on the next read)."""
        self.feature_file.close()
