"""One inference path: :func:`load_for_inference` and :func:`iter_videos` (DESIGN.md §7).

:func:`load_for_inference` loads, behind one :class:`Predictor` interface,

* any kd_detect checkpoint (``DetectorModule`` / ``TeacherModule`` / ``StudentModule``; a
  student is rebuilt without its teachers, which are not needed to predict), or
* an exported RGB-only model (``kd-detect export``): the TorchScript ``student.pt`` or the
  plain ``student.state.pt``.

:func:`iter_videos` runs it over a loader and yields, per video, ``(id, probabilities (T, C),
features (F, T) or None)`` over the video's valid steps only: ``p_{t,c} = σ(logit_{c,t})``
for ``t < T_valid``. ``kd-detect predict``, ``kd-detect plot`` and the tests read models
through these two only.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

import torch
from torch import Tensor

from kd_detect.data.batch import MASK, META, to_model_layout
from kd_detect.errors import CheckpointError, FeatureFileError

RGB = "rgb"


Output = tuple[Tensor, Optional[Tensor]]


class Predictor:
    """A loaded model behind one interface: ``predictor(batch) -> probabilities (B, C, T)``,
    0 on padded steps; :meth:`outputs` gives ``(probabilities, features (B, F, T) or None)``.
    ``modality_dims`` names what the model reads, with feature dims; ``module`` is the
    LightningModule for a checkpoint (``None`` for an export). ``event_threshold`` is the
    segment extraction threshold the model's validation chose (``event_threshold: auto``),
    ``None`` when it has none."""

    def __init__(
        self,
        run: Callable[[dict[str, Any]], Output],
        classes: Sequence[str],
        modality_dims: dict[str, int],
        source: str,
        kind: str,
        module: Any = None,
        event_threshold: float | None = None,
    ) -> None:
        self._run = run
        self.event_threshold = None if event_threshold is None or event_threshold != event_threshold else float(
            event_threshold)
        self.module = module
        self.classes = [str(c) for c in classes]
        self.modality_dims = {m: int(d) for m, d in modality_dims.items()}
        self.source = source
        self.kind = kind

    @property
    def modalities(self) -> list[str]:
        return list(self.modality_dims)

    def outputs(self, batch: dict[str, Any]) -> Output:
        with torch.no_grad():
            return self._run(batch)

    def __call__(self, batch: dict[str, Any]) -> Tensor:
        return self.outputs(batch)[0]


def _is_torchscript(path: Path) -> bool:
    """TorchScript archives are zip files with a ``code/`` folder and ``constants.pkl``."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
    return any(n.endswith("/constants.pkl") for n in names) and any("/code/" in n for n in names)


def _scripted_predictor(path: Path, device: torch.device) -> Predictor:
    try:
        model = torch.jit.load(str(path), map_location=device)
    except Exception as err:  # noqa: BLE001 - any load failure means "not a usable TorchScript file"
        raise CheckpointError(f"{path}: not a loadable TorchScript file ({type(err).__name__}: {err})") from err
    if not hasattr(model, "classes") or not hasattr(model, "in_dim"):
        raise CheckpointError(
            f"{path}: TorchScript module lacks the 'classes'/'in_dim' attributes of a `kd-detect export` model"
        )
    model.eval()

    def run(batch: dict[str, Any]) -> Output:
        return model(batch[RGB].to(device), batch[MASK].to(device)), None

    chosen = float(model.event_threshold) if hasattr(model, "event_threshold") else None  # older exports: none
    return Predictor(run, list(model.classes), {RGB: int(model.in_dim)}, str(path), "TorchScript export",
                     event_threshold=chosen)


def _deployed_predictor(model: torch.nn.Module, path: Path, device: torch.device) -> Predictor:
    model = model.to(device).eval()

    def run(batch: dict[str, Any]) -> Output:
        return model(batch[RGB].to(device), batch[MASK].to(device)), None

    return Predictor(run, list(model.classes), {RGB: int(model.in_dim)}, str(path), "export state file",
                     event_threshold=float(model.event_threshold))


def load_without_teachers(path: str | os.PathLike, ckpt: dict[str, Any] | None = None) -> Any:
    """The module of a kd_detect checkpoint in eval mode; a student without its teachers
    (their checkpoints or caches are neither needed nor read)."""
    from kd_detect.modules.loading import checkpoint_class, load_detector, read_checkpoint
    from kd_detect.modules.student import StudentModule

    cls = checkpoint_class(read_checkpoint(path) if ckpt is None else ckpt, path)
    overrides = {"teachers": {}, "teacher_caches": {}} if issubclass(cls, StudentModule) else {}
    return load_detector(path, **overrides)


def module_predictor(module: Any, source: str, device: str | torch.device = "cpu") -> Predictor:
    """A :class:`Predictor` around an already loaded detector module."""
    device = torch.device(device)
    module = module.to(device).eval()
    modalities = list(module.modalities)

    def run(batch: dict[str, Any]) -> Output:
        inputs = {m: batch[m].to(device) for m in modalities}
        mask = batch[MASK].to(device)
        inputs[MASK] = mask
        out = module(inputs)
        return torch.sigmoid(out.logits.float()) * mask.unsqueeze(1), out.features

    return Predictor(run, list(module.classes), dict(module.modality_dims), source, type(module).__name__, module,
                     getattr(module, "event_threshold_chosen", None))


def _is_export_state(path: Path) -> bool:
    """True for a ``kd-detect export`` state file: plain data (it loads with
    ``weights_only=True``, which a Lightning checkpoint does not) carrying the export key.
    Telling it apart this way needs neither Lightning nor the LightningModules."""
    from kd_detect.modules.deploy import STATE_FORMAT

    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - not plain data (a checkpoint) or not a torch file: not a state file
        return False
    return isinstance(payload, dict) and payload.get("kd_detect_export") == STATE_FORMAT


def load_for_inference(path: str | os.PathLike, device: str | torch.device = "cpu") -> Predictor:
    """Load a kd_detect checkpoint, a TorchScript export or an export state file. Only a
    checkpoint imports its module class (and so Lightning): exports run on torch alone."""
    path, device = Path(path), torch.device(device)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    if _is_torchscript(path):
        return _scripted_predictor(path, device)
    if _is_export_state(path):
        from kd_detect.modules.deploy import load_state

        return _deployed_predictor(load_state(path), path, device)
    from kd_detect.modules.loading import read_checkpoint

    ckpt = read_checkpoint(path)
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise CheckpointError(
            f"{path}: neither a kd_detect checkpoint (.ckpt) nor a `kd-detect export` file (.pt / .state.pt)"
        )
    return module_predictor(load_without_teachers(path, ckpt), str(path), device)


# ------------------------------------------------------------------------------ data checks
def check_data(predictor: Predictor, data: str | os.PathLike) -> None:
    """The file must hold videos and every modality the model reads, with the model's dims."""
    from kd_detect.data.format import FeatureFile

    ff = FeatureFile(data)
    if not ff.video_ids:
        raise FeatureFileError(f"{ff.path}: the file has no videos, nothing to predict")
    absent = [m for m in predictor.modalities if m not in ff.modalities]
    if absent:
        raise FeatureFileError(
            f"{ff.path}: the model ({predictor.source}, {predictor.kind}) reads modalities {predictor.modalities}, "
            f"the file has only {ff.modalities} (missing {absent})"
        )
    for m, expected in predictor.modality_dims.items():
        got = ff.modality_dims.get(m)
        if got is not None and got != expected:
            raise FeatureFileError(
                f"{ff.path}: modality {m!r} has feature dim {got}, the model ({predictor.source}) expects {expected}"
            )


# ------------------------------------------------------------------------------ per video
def iter_videos(
    predictor: Predictor, loader: Any
) -> Iterator[tuple[str, Tensor, Optional[Tensor], dict[str, Any]]]:
    """``(video_id, probabilities (T, C) float32, features (F, T) float32 or None, meta)`` per
    video of ``loader``'s batches, cut to the video's valid steps (``meta``: that video's
    entries of the batch's ``meta``, e.g. ``duration``; ``labels`` (T, C) when the batch has them)."""
    for batch in map(to_model_layout, loader):
        probs, feats = predictor.outputs(batch)
        probs = probs.float().cpu()
        lengths = batch[MASK].sum(1).tolist()
        meta = batch[META]
        labels = batch.get("labels")
        for i, vid in enumerate(meta["video_id"]):
            n = int(lengths[i])
            info = {k: v[i] for k, v in meta.items() if k != "video_id" and hasattr(v, "__getitem__")}
            if labels is not None:
                info["labels"] = labels[i, :, :n].T
            yield (
                vid,
                probs[i, :, :n].T.contiguous(),
                None if feats is None else feats[i, :, :n].float().cpu().clone(),
                info,
            )
