"""``kd-detect predict --ckpt CKPT --data FILE.h5 --out preds.h5``: per-step probabilities (DESIGN.md §7).

The model may be

* any kd_detect checkpoint (``DetectorModule`` / ``TeacherModule`` / ``StudentModule``; a
  student is rebuilt without its teachers, which are not needed to predict), or
* an exported RGB-only model (``kd-detect export``): the TorchScript ``student.pt`` or the
  plain ``student.state.pt``.

The feature file needs only the modalities the model reads (``rgb`` for a student) and no
labels. The output is an HDF5 prediction file, written atomically (temp file + rename)::

    /                    attrs: classes = [str, ...]   (the model's class names)
    /videos/<id>/scores  float32 (T, C) probabilities over the video's valid steps
                         (group attrs: duration in seconds)

With ``--segments FILE.jsonl``, action segments extracted by
:func:`kd_detect.metrics.extract_segments` (threshold, merge gap, minimum length) are written
one JSON object per line: ``{"video", "class" (name), "start", "end", "score"}`` (seconds).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from torch import Tensor

from kd_detect.data.batch import MASK, META, to_model_layout

RGB = "rgb"


class Predictor:
    """A loaded model behind one interface: ``predictor(batch) -> probabilities (B, C, T)``,
    0 on padded steps. ``modality_dims`` names what the model reads, with feature dims."""

    def __init__(
        self,
        run: Callable[[dict[str, Any]], Tensor],
        classes: Sequence[str],
        modality_dims: dict[str, int],
        source: str,
        kind: str,
    ) -> None:
        self._run = run
        self.classes = [str(c) for c in classes]
        self.modality_dims = {m: int(d) for m, d in modality_dims.items()}
        self.source = source
        self.kind = kind

    @property
    def modalities(self) -> list[str]:
        return list(self.modality_dims)

    def __call__(self, batch: dict[str, Any]) -> Tensor:
        with torch.no_grad():
            return self._run(batch)


def _is_torchscript(path: Path) -> bool:
    """TorchScript archives are zip files with a ``code/`` folder and ``constants.pkl``."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
    return any(n.endswith("/constants.pkl") for n in names) and any("/code/" in n for n in names)


def _scripted_predictor(path: Path, device: torch.device) -> Predictor:
    from kd_detect.modules.loading import CheckpointError

    try:
        model = torch.jit.load(str(path), map_location=device)
    except Exception as err:  # noqa: BLE001 - any load failure means "not a usable TorchScript file"
        raise CheckpointError(f"{path}: not a loadable TorchScript file ({type(err).__name__}: {err})") from err
    if not hasattr(model, "classes") or not hasattr(model, "in_dim"):
        raise CheckpointError(
            f"{path}: TorchScript module lacks the 'classes'/'in_dim' attributes of a `kd-detect export` model"
        )
    model.eval()

    def run(batch: dict[str, Any]) -> Tensor:
        return model(batch[RGB].to(device), batch[MASK].to(device))

    return Predictor(run, list(model.classes), {RGB: int(model.in_dim)}, str(path), "TorchScript export")


def _deployed_predictor(model: torch.nn.Module, path: Path, device: torch.device) -> Predictor:
    model = model.to(device).eval()

    def run(batch: dict[str, Any]) -> Tensor:
        return model(batch[RGB].to(device), batch[MASK].to(device))

    return Predictor(run, list(model.classes), {RGB: int(model.in_dim)}, str(path), "export state file")


def _module_predictor(path: Path, ckpt: dict[str, Any], device: torch.device) -> Predictor:
    from kd_detect.modules import StudentModule
    from kd_detect.modules.loading import checkpoint_class, load_detector

    cls = checkpoint_class(ckpt, path)
    overrides = {"teachers": {}, "teacher_caches": {}} if issubclass(cls, StudentModule) else {}
    module = load_detector(path, **overrides).to(device)
    modalities = list(module.modalities)

    def run(batch: dict[str, Any]) -> Tensor:
        inputs = {m: batch[m].to(device) for m in modalities}
        mask = batch[MASK].to(device)
        inputs[MASK] = mask
        logits = module(inputs).logits.float()
        return torch.sigmoid(logits) * mask.unsqueeze(1)

    return Predictor(run, list(module.classes), dict(module.modality_dims), str(path), cls.__name__)


def load_predictor(path: str | os.PathLike, device: str | torch.device = "cpu") -> Predictor:
    """Load a kd_detect checkpoint, a TorchScript export or an export state file."""
    from kd_detect.export import STATE_FORMAT, load_state
    from kd_detect.modules.loading import CheckpointError, read_checkpoint

    path, device = Path(path), torch.device(device)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    if _is_torchscript(path):
        return _scripted_predictor(path, device)
    ckpt = read_checkpoint(path)
    if isinstance(ckpt, dict) and ckpt.get("kd_detect_export") == STATE_FORMAT:
        return _deployed_predictor(load_state(path), path, device)
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise CheckpointError(
            f"{path}: neither a kd_detect checkpoint (.ckpt) nor a `kd-detect export` file (.pt / .state.pt)"
        )
    return _module_predictor(path, ckpt, device)


# ------------------------------------------------------------------------------ data checks
def check_data(predictor: Predictor, data: str | os.PathLike) -> None:
    """The file must hold videos and every modality the model reads, with the model's dims."""
    from kd_detect.data.format import FeatureFile, FeatureFileError

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


# ------------------------------------------------------------------------------ writing
def _tmp_near(path: Path) -> Path:
    """A temporary file next to ``path`` (renamed over it when complete)."""
    from kd_detect.tools import UsageError

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as err:
        raise UsageError(f"{path}: cannot write here ({err.strerror or err})") from err
    os.close(fd)
    return Path(tmp)


def _publish(tmp: Path, path: Path) -> None:
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    os.replace(tmp, path)


def iter_scores(
    predictor: Predictor, loader: Any, durations: dict[str, float] | None = None
) -> Iterator[tuple[str, float, np.ndarray]]:
    """``(video_id, duration, scores (T, C) float32)`` per video of ``loader``'s batches;
    ``durations`` (the file's float64 values) override the batch's float32 ones."""
    durations = durations or {}
    for batch in map(to_model_layout, loader):
        probs = predictor(batch).float().cpu()
        lengths = batch[MASK].sum(1).tolist()
        meta = batch[META]
        for i, vid in enumerate(meta["video_id"]):
            scores = probs[i, :, : int(lengths[i])].transpose(0, 1).contiguous().numpy().astype(np.float32)
            yield vid, float(durations.get(vid, meta["duration"][i])), scores


def write_predictions(
    predictor: Predictor,
    loader: Any,
    out: str | os.PathLike,
    segments_out: str | os.PathLike | None = None,
    threshold: float = 0.5,
    merge_gap: float = 0.0,
    min_length: float = 0.0,
    attrs: dict[str, Any] | None = None,
    durations: dict[str, float] | None = None,
) -> tuple[int, int]:
    """Run ``predictor`` over ``loader`` and write the prediction file (and segments, times
    rounded to the microsecond). Both files are written atomically. Returns
    ``(videos, segments)`` counts."""
    import h5py

    from kd_detect.metrics import extract_segments

    out = Path(out)
    tmp = _tmp_near(out)
    segments: dict[str, list[dict[str, Any]]] = {}
    n_videos = 0
    try:
        with h5py.File(tmp, "w") as h5:
            h5.attrs["classes"] = predictor.classes
            for key, value in (attrs or {}).items():
                h5.attrs[key] = value
            videos = h5.create_group("videos")
            for vid, duration, scores in iter_scores(predictor, loader, durations):
                group = videos.create_group(vid)
                group.attrs["duration"] = duration
                group.create_dataset("scores", data=scores)
                n_videos += 1
                if segments_out is not None:
                    segments[vid] = [
                        {"video": vid, "class": predictor.classes[c], "start": round(start, 6), "end": round(end, 6),
                         "score": round(score, 6)}
                        for c, start, end, score in extract_segments(scores, duration, threshold, merge_gap, min_length)
                    ]
        if segments_out is not None:
            seg_path = Path(segments_out)
            seg_tmp = _tmp_near(seg_path)
            try:
                with open(seg_tmp, "w") as fh:
                    for vid in sorted(segments):
                        for row in segments[vid]:
                            fh.write(json.dumps(row) + "\n")
                _publish(seg_tmp, seg_path)
            finally:
                seg_tmp.unlink(missing_ok=True)
        _publish(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return n_videos, sum(len(v) for v in segments.values())


def predict(
    ckpt: str | os.PathLike,
    data: str | os.PathLike,
    out: str | os.PathLike,
    subset: str | list[str] | None = None,
    segments: str | os.PathLike | None = None,
    threshold: float = 0.5,
    merge_gap: float = 0.0,
    min_length: float = 0.0,
    batch_size: int = 8,
    device: str = "cpu",
) -> tuple[int, int]:
    """Predict every video of ``subset`` (all with ``None``) of ``data``; see module docstring."""
    from kd_detect.data.datamodule import FeatureDataModule

    predictor = load_predictor(ckpt, device)
    check_data(predictor, data)
    dm = FeatureDataModule(
        str(data),
        modalities=predictor.modalities,
        predict_subset=subset,
        batch_size=batch_size,
        eval_batch_size=batch_size,
        require_labels=False,
    )
    if list(dm.classes) != predictor.classes:
        print(
            f"kd-detect predict: note: {data} names classes {dm.classes[:3]}… ({dm.num_classes}), the model "
            f"{predictor.classes[:3]}… ({len(predictor.classes)}); scores follow the model's classes",
            file=sys.stderr,
        )
    dm.setup("predict")
    try:
        return write_predictions(
            predictor, dm.predict_dataloader(), out, segments, threshold, merge_gap, min_length,
            attrs={"source_checkpoint": str(ckpt), "source_data": str(data)},
            durations=dm.feature_file.durations,
        )
    finally:
        dm.teardown("predict")


def main(argv: list[str]) -> int:
    """``kd-detect predict --ckpt CKPT --data FILE.h5 --out preds.h5 [...]``."""
    from kd_detect.tools import UsageError, user_errors

    parser = argparse.ArgumentParser(
        prog="kd-detect predict",
        description="Per-step action probabilities of every video of a feature file, from a kd_detect "
        "checkpoint or an exported RGB-only model; optional action segments as JSON lines.",
    )
    parser.add_argument("--ckpt", required=True, help="kd_detect .ckpt, exported TorchScript .pt or .state.pt")
    parser.add_argument("--data", required=True, help="feature file (HDF5, format v1); labels not needed")
    parser.add_argument("--subset", nargs="+", default=None, help="subset(s) to predict (default: every video)")
    parser.add_argument("--out", required=True, help="prediction file to write (HDF5)")
    parser.add_argument("--segments", default=None, help="also write action segments to this .jsonl file")
    parser.add_argument("--threshold", type=float, default=0.5, help="segments: probability threshold")
    parser.add_argument("--merge-gap", type=float, default=0.0, help="segments: merge runs this close (seconds)")
    parser.add_argument("--min-length", type=float, default=0.0, help="segments: drop shorter ones (seconds)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    args = parser.parse_args(argv)
    with user_errors(parser.prog, also=()):
        if args.batch_size < 1:
            raise UsageError(f"--batch-size must be >= 1, got {args.batch_size}")
        if not 0.0 <= args.threshold <= 1.0:
            raise UsageError(f"--threshold must be a probability in [0, 1], got {args.threshold}")
        if args.merge_gap < 0 or args.min_length < 0:
            raise UsageError("--merge-gap and --min-length must be >= 0 seconds")
        subset = None if args.subset is None else (args.subset[0] if len(args.subset) == 1 else args.subset)
        n_videos, n_segments = predict(
            args.ckpt, args.data, args.out, subset, args.segments, args.threshold, args.merge_gap,
            args.min_length, args.batch_size, args.device,
        )
        print(f"wrote per-step scores of {n_videos} videos to {args.out}")
        if args.segments:
            print(f"wrote {n_segments} action segments to {args.segments}")
    return 0
