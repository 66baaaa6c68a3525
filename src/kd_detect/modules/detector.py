"""DetectorModule: the common LightningModule of every detector (DESIGN.md §2).

Masked BCE-with-logits on per-step multi-hot labels, Adam + ReduceLROnPlateau on the
validation loss (PDAN defaults: lr 1e-4, factor 0.5, patience 8), per-frame mAP on
validation/test, the Charades 25-frame mAP (and optionally event-level mAP) on test,
and ``predict_step`` giving per-video probabilities over valid steps.

Inputs: the listed ``modalities`` are encoded (:meth:`build_encoder`, identity by
default) and concatenated along channels (early fusion); one modality -- the RGB-only
baseline -- is the degenerate case. :class:`~kd_detect.modules.teacher.TeacherModule`
adds mid and late fusion.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
from typing import Any, Callable, Iterator

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kd_detect.config import AUTO, threshold_setting
from kd_detect.data.batch import LABELS, MASK, META, labelled_mask, mix_videos, stretch_videos, to_model_layout
from kd_detect.errors import UsageError
from kd_detect.models.heads.base import DetectionHead, HeadOutput
from kd_detect.models.inputs import Standardize, input_dropout

HeadFactory = Callable[[int, int], DetectionHead]
"""Builds a head from ``(in_dim, num_classes)``; in YAML a ``class_path`` + ``init_args``
whose first two arguments the module supplies."""


def default_head(in_dim: int, num_classes: int) -> DetectionHead:
    """PDAN with the authors' defaults."""
    from kd_detect.models.heads import PDAN

    return PDAN(in_dim, num_classes)


#: the learning-rate schedules of :class:`DetectorModule`
LR_SCHEDULES = ("plateau", "cosine")


def cosine_factor(step: int, total: int, warmup: int = 0) -> float:
    """The rate's multiplier at optimiser step ``step`` of ``total``: ``step / warmup`` during
    the warm-up, then ``½(1 + cos(π u))`` with ``u = (step − warmup) / (total − warmup)``
    (1 at the end of the warm-up, 0 at the last step), clamped to ``[0, 1]``."""
    if step < warmup:
        return step / warmup
    u = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.5 * (1.0 + math.cos(math.pi * u))


def masked_bce(logits: Tensor, labels: Tensor, mask: Tensor) -> Tensor:
    """Mean BCE-with-logits over valid steps and classes (padding excluded)."""
    loss = F.binary_cross_entropy_with_logits(logits.float(), labels.float(), reduction="none")
    weights = mask.unsqueeze(1).to(loss.dtype)
    denom = weights.sum() * logits.shape[1]
    return (loss * weights).sum() / denom.clamp_min(1.0)


#: checkpoint key of the ids of the videos the model was trained on
TRAINING_VIDEOS = "kd_detect_training_videos"
#: checkpoint key of the seed the fit was started with (``seed_everything``)
TRAINING_SEED = "kd_detect_seed"
#: checkpoint key of the event extraction threshold chosen on validation (``event_threshold: auto``)
EVENT_THRESHOLD = "kd_detect_event_threshold"


class DetectorModule(pl.LightningModule):
    """A temporal action detector on one or more precomputed-feature modalities.

    Args:
        head: head factory ``(in_dim, num_classes) -> DetectionHead`` (default PDAN).
        modalities: batch keys the detector reads (``["rgb"]`` for the RGB-only baseline).
        num_classes, classes, modality_dims: linked from the DataModule by the CLI.
        lr, weight_decay, lr_factor, lr_patience: AdamW (decoupled weight decay; plain Adam
            at 0) + ReduceLROnPlateau(val/loss).
        lr_schedule: ``"plateau"`` (default: the rate multiplied by ``lr_factor`` after
            ``lr_patience`` epochs without a lower validation loss) or ``"cosine"``: a fixed
            schedule over the fit's optimiser steps, ``lr · ½(1 + cos(π u))`` with ``u`` going
            from 0 to 1 (after ``warmup_epochs`` of linear warm-up from 0), so validation
            chooses only the checkpoint, never the rate (:func:`cosine_factor`).
        warmup_epochs: ``"cosine"`` only: epochs of linear warm-up (may be fractional).
        input_dropout: channel dropout on the fused input features (whole dimensions of a
            video, ``kd_detect.models.inputs``); 0 = off.
        standardize: standardise each modality's features with the training videos' mean
            and std, measured when fit starts and kept in the checkpoint.
        mixup: ``α`` of mixup across a training batch's videos (every modality and the
            labels, ``kd_detect.data.batch.mix_videos``; a student's teacher reads the mixed
            batch too); 0 = off.
        time_stretch: ``s`` of temporal scale augmentation: each training video resampled
            at a speed drawn log-uniformly in ``[1/s, s]`` (every modality and the labels,
            ``kd_detect.data.batch.stretch_videos``; a student's teacher reads the resampled
            batch too); 1 = off. Applied before mixup. On the synthetic benchmark it helps
            neither RGB-only nor the student (docs/results.md, "Time stretch").
        event_map: also compute event-level mAP (PKU-MMD protocol) at test time.
        event_threshold, event_merge_gap, event_min_length: segment extraction for it. With
            ``event_threshold: auto`` the threshold is chosen on the validation videos:
            every validation epoch computes event mAP at each of ``event_thresholds``
            (default ``kd_detect.metrics.EVENT_THRESHOLDS``) and keeps the best (logged as
            ``val/event_map`` and ``val/event_threshold``); the checkpoint of an epoch
            carries that epoch's choice (:attr:`event_threshold_chosen`), test uses it
            (``test/event_threshold``) and ``kd-detect predict --threshold auto`` extracts
            segments with it. Event mAP at one fixed cut ranks models partly by confidence
            (docs/metrics.md); a cut chosen per model on validation does not.

    The ids of the videos a fit trained on (the DataModule's ``training_videos``) are kept
    in :attr:`training_videos` and in the checkpoint (``None`` when unknown: a checkpoint
    written before they were recorded); a cross-fitted teacher
    (``kd_detect.modules.cross_fit``) routes each video to a fold teacher that never saw it.
    So is the seed the fit started from (:attr:`seed`, ``seed_everything``; ``None`` when
    unseeded or unknown): fold teachers started from one seed share their feature basis.
    """

    def __init__(
        self,
        head: HeadFactory | None = None,
        modalities: list[str] | None = None,
        num_classes: int = 0,
        classes: list[str] | None = None,
        modality_dims: dict[str, int] | None = None,
        lr: float = 1e-4,
        weight_decay: float = 0.0,
        lr_factor: float = 0.5,
        lr_patience: int = 8,
        lr_schedule: str = "plateau",
        warmup_epochs: float = 0.0,
        input_dropout: float = 0.0,
        standardize: bool = False,
        mixup: float = 0.0,
        time_stretch: float = 1.0,
        event_map: bool = False,
        event_threshold: float | str = 0.5,
        event_merge_gap: float = 0.0,
        event_min_length: float = 0.0,
        event_thresholds: list[float] | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.modalities = list(modalities or self.default_modalities())
        if num_classes <= 0:
            raise ValueError(
                f"{type(self).__name__}: num_classes must be positive (normally linked from the DataModule), got {num_classes}"
            )
        self.num_classes = int(num_classes)
        self.classes = list(classes) if classes else [f"class_{i}" for i in range(num_classes)]
        dims = dict(modality_dims or {})
        missing = [m for m in self.modalities if m not in dims]
        if missing:
            raise ValueError(
                f"{type(self).__name__}: feature dims unknown for modalities {missing} (have {sorted(dims)}); "
                "the data file must contain them"
            )
        self.modality_dims = {m: int(dims[m]) for m in self.modalities}
        self.head_factory = head or default_head
        # (hparams may hold only what a config gave, so keep the effective values here)
        self.lr, self.weight_decay, self.lr_factor, self.lr_patience = lr, weight_decay, lr_factor, lr_patience
        if lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"{type(self).__name__}: lr_schedule must be one of {LR_SCHEDULES}, got {lr_schedule!r}")
        if not warmup_epochs >= 0 or (warmup_epochs > 0 and lr_schedule != "cosine"):
            raise ValueError(f"{type(self).__name__}: warmup_epochs must be >= 0 and is for lr_schedule 'cosine' only, "
                             f"got {warmup_epochs} with {lr_schedule!r}")
        self.lr_schedule, self.warmup_epochs = lr_schedule, float(warmup_epochs)
        if not 0.0 <= input_dropout < 1.0:
            raise ValueError(f"{type(self).__name__}: input_dropout must be in [0, 1), got {input_dropout}")
        self.input_dropout, self.standardize = float(input_dropout), bool(standardize)
        if mixup < 0:
            raise ValueError(f"{type(self).__name__}: mixup (the Beta distribution's alpha) must be >= 0, got {mixup}")
        self.mixup = float(mixup)
        if not time_stretch >= 1:
            raise ValueError(f"{type(self).__name__}: time_stretch (the largest speed factor) must be >= 1 "
                             f"(1 = off), got {time_stretch}")
        self.time_stretch = float(time_stretch)
        self.event = {"enabled": event_map, "threshold": self._check_event_threshold(event_threshold),
                      "merge_gap": event_merge_gap, "min_length": event_min_length,
                      "candidates": event_thresholds}
        if event_thresholds is not None and event_threshold != AUTO:
            raise ValueError(f"{type(self).__name__}: event_thresholds are the candidates of event_threshold: auto, "
                             f"but event_threshold is {event_threshold!r}")
        #: the event extraction threshold chosen on validation (``event_threshold: auto``;
        #: ``None`` until a validation epoch has run, or without ``auto``)
        self.event_threshold_chosen: float | None = None
        if self.standardize:  # before build_model, which subclasses (TeacherModule) override
            self.standardizers = nn.ModuleDict({m: Standardize(self.modality_dims[m]) for m in self.modalities})
        self.training_videos: list[str] | None = None
        self.seed: int | None = None
        self.build_model()
        self._build_metrics()

    def _check_event_threshold(self, value: float | str) -> float | str:
        try:
            return threshold_setting(value)
        except ValueError as err:
            raise ValueError(f"{type(self).__name__}: event_threshold {err}") from None

    @property
    def choose_event_threshold(self) -> bool:
        """Whether validation chooses the event extraction threshold (``event_map`` with
        ``event_threshold: auto``)."""
        return bool(self.event["enabled"]) and self.event["threshold"] == AUTO

    # ----------------------------------------------------------------- model
    @classmethod
    def default_modalities(cls) -> list[str]:
        return ["rgb"]

    def build_encoder(self, modality: str, in_dim: int) -> tuple[nn.Module, int]:
        """How one modality is encoded before fusion: ``(module, out_dim)``.

        The module maps ``(B, in_dim, T)`` to ``(B, out_dim, T)`` pointwise in time (so
        masking stays exact). Default: identity. Override in a subclass to add e.g. a
        normalisation or a 1×1 embedding for a new modality.
        """
        return nn.Identity(), in_dim

    def build_model(self) -> None:
        encoders, dims = {}, []
        for m in self.modalities:
            enc, out_dim = self.build_encoder(m, self.modality_dims[m])
            encoders[m] = enc
            dims.append(out_dim)
        self.encoders = nn.ModuleDict(encoders)
        self.head = self.head_factory(sum(dims), self.num_classes)

    @contextlib.contextmanager
    def set_aside_for_copy(self) -> Iterator[None]:
        """Inside the block the module holds its weights and settings and nothing it only
        needed to be built, for a deep copy such as :class:`kd_detect.callbacks.EMA`'s
        average: the head factory (from a config, a jsonargparse partial that holds a lock
        under DDP) is set aside and restored after the block."""
        missing = object()
        factory = self.__dict__.pop("head_factory", missing)
        try:
            yield
        finally:
            if factory is not missing:
                self.head_factory = factory

    @property
    def feature_dim(self) -> int:
        """F of :attr:`HeadOutput.features` (what distillation plugins see)."""
        return int(self.head.feature_dim)

    def encode(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        out = {}
        for m in self.modalities:
            if m not in batch:
                raise KeyError(
                    f"{type(self).__name__} needs modality {m!r} but the batch has {sorted(k for k in batch if k not in (LABELS, MASK, META))}"
                )
            x = batch[m]
            if self.standardize:
                x = self.standardizers[m](x, batch[MASK])
            out[m] = self.encoders[m](x)
        return out

    def forward(self, batch: dict[str, Any]) -> HeadOutput:
        mask = batch[MASK]
        x = torch.cat(list(self.encode(batch).values()), dim=1)
        return self.head(input_dropout(x, self.input_dropout, self.training), mask)

    def reads_unlabelled(self) -> list[str]:
        """The losses of this module that learn from videos without labels (none: a detector
        learns from labels alone; :class:`~kd_detect.modules.student.StudentModule` says
        which of its distillation losses do)."""
        return []

    def check_unlabelled(self, unlabelled: list[str]) -> None:
        """Refuse training videos without labels (``data.unlabelled_subset``) when no loss of
        this module would read them: they would cost time and teach nothing."""
        if unlabelled and not self.reads_unlabelled():
            raise UsageError(
                f"data.unlabelled_subset gives {len(unlabelled)} training videos without labels (e.g. "
                f"{unlabelled[0]!r}), but {type(self).__name__} learns from labels only; unlabelled videos teach "
                "only a StudentModule with an active distillation loss. Unset data.unlabelled_subset"
            )

    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if stage == "fit" and datamodule is not None:
            self.check_unlabelled(list(getattr(datamodule, "unlabelled_videos", [])))

    def on_fit_start(self) -> None:
        if self.standardize:
            self.measure_input_statistics()
        self.record_training_videos()

    def record_training_videos(self) -> None:
        """Keep the ids of the attached DataModule's training videos, and the seed
        ``seed_everything`` set (``PL_GLOBAL_SEED``), for the checkpoint. A resumed fit
        keeps the seed its checkpoint recorded."""
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        videos = getattr(datamodule, "training_videos", None)
        if videos:
            self.training_videos = sorted(videos)
        seed = os.environ.get("PL_GLOBAL_SEED")
        if self.seed is None and seed is not None:
            self.seed = int(seed)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.training_videos is not None:
            checkpoint[TRAINING_VIDEOS] = list(self.training_videos)
        if self.seed is not None:
            checkpoint[TRAINING_SEED] = int(self.seed)
        if self.event_threshold_chosen is not None:
            checkpoint[EVENT_THRESHOLD] = float(self.event_threshold_chosen)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        videos = checkpoint.get(TRAINING_VIDEOS)
        self.training_videos = None if videos is None else [str(v) for v in videos]
        seed = checkpoint.get(TRAINING_SEED)
        self.seed = None if seed is None else int(seed)
        chosen = checkpoint.get(EVENT_THRESHOLD)
        self.event_threshold_chosen = None if chosen is None else float(chosen)

    def measure_input_statistics(self) -> None:
        """Set the standardisation statistics from the training videos of the attached
        DataModule, once (a resumed or fine-tuned model keeps the statistics it has)."""
        todo = [m for m in self.modalities if not self.standardizers[m].is_ready]
        if not todo:
            return
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if datamodule is None or not hasattr(datamodule, "feature_statistics"):
            raise RuntimeError(
                f"{type(self).__name__}(standardize=True) measures its input statistics on the training "
                "videos of a FeatureDataModule; fit it with one (or call standardizers[m].set_statistics)"
            )
        for m, (mean, std) in datamodule.feature_statistics(todo).items():
            self.standardizers[m].set_statistics(mean, std)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Host-layout batches (``(B, T, D)``, stored dtype) become the ``(B, D, T)`` float32
        batches of the heads here, on the device: the widening, transposing copy runs where
        it is cheap (a GPU) instead of in the loader (``kd_detect.data.batch``)."""
        return to_model_layout(batch) if isinstance(batch, dict) else batch

    # --------------------------------------------------------------- metrics
    def _build_metrics(self) -> None:
        from kd_detect.metrics import CharadesMAP, FrameMAP

        self.val_map = FrameMAP(self.num_classes)
        self.test_map = FrameMAP(self.num_classes)
        self.test_charades = CharadesMAP(self.num_classes)
        if self.event["enabled"]:
            from kd_detect.metrics import EVENT_THRESHOLDS, EventMAP, EventThresholdSearch

            self.test_event = EventMAP(
                self.num_classes,
                threshold=0.5 if self.event["threshold"] == AUTO else self.event["threshold"],  # auto: set at test
                merge_gap=self.event["merge_gap"],
                min_length=self.event["min_length"],
            )
            if self.choose_event_threshold:
                self.val_event = EventThresholdSearch(
                    self.num_classes, self.event["candidates"] or EVENT_THRESHOLDS,
                    merge_gap=self.event["merge_gap"], min_length=self.event["min_length"],
                )

    # ------------------------------------------------------------------ steps
    def detection_loss(self, out: HeadOutput, batch: dict[str, Any]) -> Tensor:
        """Masked BCE over the valid steps of the batch's labelled videos (0, with a zero
        gradient, for a batch without any: ``kd_detect.data.batch.labelled_mask``)."""
        return masked_bce(out.logits, batch[LABELS], labelled_mask(batch))

    def augment(self, batch: dict[str, Any]) -> dict[str, Any]:
        """The training batch as the step sees it: resampled in time (``time_stretch``),
        then mixed (``mixup``); a new dict of the same tensors when both are off."""
        return mix_videos(stretch_videos(batch, self.time_stretch), self.mixup)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        batch = self.augment(batch)
        out = self(batch)
        loss = self.detection_loss(out, batch)
        self.log("train/bce", loss, batch_size=batch[MASK].shape[0])
        self.log("train/loss", loss, prog_bar=True, batch_size=batch[MASK].shape[0])
        return loss

    def _eval_step(self, batch: dict[str, Any], stage: str) -> HeadOutput:
        out = self(batch)
        loss = self.detection_loss(out, batch)
        self.log(f"{stage}/loss", loss, sync_dist=True, batch_size=batch[MASK].shape[0], prog_bar=stage == "val")
        return out

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        out = self._eval_step(batch, "val")
        probs = torch.sigmoid(out.logits.float())
        self.val_map.update(probs, batch[LABELS], batch[MASK])
        if self.choose_event_threshold:
            meta = batch[META]
            self.val_event.update(probs, batch[MASK], meta["duration"], meta["segments"], meta["video_id"])

    def on_validation_epoch_end(self) -> None:
        res = self.val_map.compute()
        self.log("val/frame_map", res["map"], prog_bar=True)
        self.log("val/frame_map_all", res["map_all"])
        self.val_map.reset()
        if self.choose_event_threshold:
            # every rank gets the same synced figures, so the same choice
            chosen, best, _ = self.val_event.compute()
            self.val_event.reset()
            self.log("val/event_map", best)
            self.log("val/event_threshold", chosen)
            if not self.trainer.sanity_checking:  # a few batches of an untrained model choose nothing
                self.event_threshold_chosen = chosen

    def on_test_epoch_start(self) -> None:
        if self.choose_event_threshold:
            if self.event_threshold_chosen is None:
                raise UsageError(
                    f"{type(self).__name__}: event_threshold: auto uses the threshold chosen on the validation videos, "
                    "and this model has none (its checkpoint was not validated with event_map: true and "
                    "event_threshold: auto); give event_threshold a probability"
                )
            self.test_event.threshold = float(self.event_threshold_chosen)

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        out = self._eval_step(batch, "test")
        probs = torch.sigmoid(out.logits.float())
        self.test_map.update(probs, batch[LABELS], batch[MASK])
        meta = batch[META]
        self.test_charades.update(probs, batch[MASK], meta["duration"], meta["segments"], meta["video_id"])
        if self.event["enabled"]:
            self.test_event.update(probs, batch[MASK], meta["duration"], meta["segments"], meta["video_id"])

    def on_test_epoch_end(self) -> None:
        res = self.test_map.compute()
        self.log("test/frame_map", res["map"])
        self.log("test/frame_map_all", res["map_all"])
        self.test_ap = res["ap"].detach().cpu()
        self.test_map.reset()
        self.log("test/charades_map", self.test_charades.compute())
        self.charades_frames = self.test_charades.frame_scores()
        self.test_charades.reset()
        if self.event["enabled"]:
            for key, value in self.test_event.compute().items():
                self.log(f"test/{key}", value)
            self.log("test/event_threshold", self.test_event.threshold)
            self.test_event.reset()

    def predict_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> list[dict[str, Any]]:
        """Per video: ``{"video_id", "duration", "scores": (T_valid, C) float32 probabilities}``."""
        out = self(batch)
        probs = torch.sigmoid(out.logits.float()).transpose(1, 2).cpu()
        lengths = batch[MASK].sum(1).tolist()
        meta = batch[META]
        return [
            {"video_id": vid, "duration": float(meta["duration"][i]), "scores": probs[i, : lengths[i]].numpy()}
            for i, vid in enumerate(meta["video_id"])
        ]

    # -------------------------------------------------------------- optimiser
    def configure_optimizers(self) -> dict[str, Any]:
        params = [p for p in self.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=self.lr, weight_decay=self.weight_decay)
        if self.lr_schedule == "cosine":
            total, epochs = self.trainer.estimated_stepping_batches, self.trainer.max_epochs
            if not math.isfinite(total) or (self.warmup_epochs > 0 and not (epochs and epochs > 0)):
                raise UsageError(f"lr_schedule 'cosine' needs a fit of known length: set --trainer.max_epochs "
                                 f"(got max_epochs={epochs}, {total} optimiser steps)")
            total = int(total)
            warmup = round(total * self.warmup_epochs / epochs) if self.warmup_epochs > 0 else 0
            lr_lambda = functools.partial(cosine_factor, total=total, warmup=warmup)
            cosine = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda)
            return {"optimizer": optimizer, "lr_scheduler": {"scheduler": cosine, "interval": "step"}}
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="min", factor=self.lr_factor, patience=self.lr_patience
        )
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "monitor": "val/loss", "interval": "epoch", "strict": False},
        }

    def parameter_counts(self) -> dict[str, int]:
        trainable = sum(p.numel() for p in self.parameters() if p.requires_grad)
        frozen = sum(p.numel() for p in self.parameters() if not p.requires_grad)
        return {"trainable": trainable, "frozen": frozen}
