"""The batch contract between the DataModule, the modules and the plugins (DESIGN.md §2).

A batch has two layouts: the **host** layout the loader delivers (a plain copy of the
stored rows, cheap to collate, pin and transfer) and the **model** layout the heads and
plugins read. :func:`to_model_layout` turns the first into the second, on the device the
model runs on (Lightning calls it in ``DetectorModule.on_after_batch_transfer``; any
other consumer of loader batches calls it itself).

Host layout (what ``FeatureDataModule``'s loaders yield)::

    {
        "<modality>": Tensor (B, T, D_m)        # stored dtype (float16 stays float16), 0 on padding
        "labels":     Tensor (B, T, C)          # stored dtype (uint8 multi-hot), 0 on padding
        "mask":       BoolTensor (B, T)         # True on valid steps
        "layout":     "host"
        "meta": {...}                           # as below
    }

Model layout (what ``forward``, the losses and the plugins see)::

    {
        "<modality>": FloatTensor (B, D_m, T)   # float32, contiguous, padded with 0
        "labels":     FloatTensor (B, C, T)     # multi-hot, 0 on padding
        "mask":       BoolTensor  (B, T)        # True on valid steps
        "meta": {
            "video_id": list[str],              # B ids
            "duration": FloatTensor (B,)        # seconds, whole video
            "length":   LongTensor  (B,)        # T of the whole video in the file
            "offset":   LongTensor  (B,)        # first step of the (cropped) window
            "segments": list[np.ndarray]        # B arrays (N_b, 3) [class, start_s, end_s]
            "labelled": BoolTensor (B,)         # False: the video has no labels (zeros above)
        },
    }

A video is unlabelled when its labels were not read (``data.unlabelled_subset``: extra
videos a student distils on); its ``labels`` are zeros that mean nothing, so every loss on
labels takes :func:`labelled_mask`, not ``mask``. Without ``meta["labelled"]`` (hand-built
batches) every video is labelled.

A batch without a ``"layout"`` key is in model layout (hand-built batches stay valid).
The conversion is exact: ``x_model[b, d, t] = float32(x_host[b, t, d])`` (float16 and
uint8 widen to float32 without rounding), so a batch is bit-identical to what the
former float32 ``(B, D, T)`` collate produced.

At evaluation time windows are whole videos (``offset == 0`` and
``mask.sum(1) == length``); at training time ``max_steps`` may crop a random window.

:func:`mix_videos` is mixup across the videos of a model-layout training batch (Zhang et
al., ICLR 2018; a detector's ``mixup: α``): every modality and the labels of video ``i``
become ``w x_i + (1 − w) x_j`` for a partner ``j`` drawn by permutation, with
``w = max(λ, 1 − λ)``, ``λ ~ Beta(α, α)`` per video, so each video stays mostly itself (its
id, crop and mask; ``meta`` is untouched). At steps where the partner is padding ``w = 1``.
Mixing commutes with a model's standardisation (an affine map; the weights sum to 1), so
raw features are mixed. A student's teacher reads the same mixed batch, so it is asked
about inputs that are not its training videos, where its outputs are not the labels it
learnt ("consistent teaching", Beyer et al., CVPR 2022).

:func:`stretch_videos` changes the speed of each video of a model-layout training batch (a
detector's ``time_stretch: s``): video ``i``, of ``L`` valid steps, is resampled to
``L' = round(L / r)`` steps at a rate ``r`` drawn log-uniformly in ``[1/s, s]``. Step ``j``
of the result reads the source at ``u_j = j (L − 1) / (L' − 1)`` (the first and last steps
stay in place): every modality by linear interpolation between the two neighbouring steps,
the labels from the nearest step, so they stay multi-hot and an action keeps its share of
the video. Real actions are performed at many speeds, and a temporal detector sees each
training instance at one; resampling shows it the same instance slower and faster, which
is temporal scale augmentation as detection pipelines use it. Interpolation is an affine
combination, so it commutes with a model's standardisation. The batch is re-padded to its
longest result; ``meta`` is untouched, so its ``offset``, ``length`` and ``segments`` still
describe the stored window (nothing reads them in a training step). A student's teacher
reads the same resampled videos.
"""

from __future__ import annotations

import math
from typing import Any

import torch

LABELS = "labels"
MASK = "mask"
META = "meta"
LAYOUT = "layout"
#: meta key: (B,) bool, whether each video's labels were read
LABELLED = "labelled"
HOST_LAYOUT = "host"
NON_MODALITY_KEYS = frozenset({LABELS, MASK, META, LAYOUT})


def modalities_in(batch: dict) -> list[str]:
    """The modality keys present in a batch."""
    return [k for k in batch if k not in NON_MODALITY_KEYS]


def labelled_mask(batch: dict) -> torch.Tensor:
    """``(B, T)`` bool: the valid steps of the labelled videos (the steps a loss on labels
    may read); ``mask`` itself when the batch does not say (every video labelled)."""
    mask: torch.Tensor = batch[MASK]
    labelled = batch.get(META, {}).get(LABELLED)
    if labelled is None:
        return mask
    return mask & torch.as_tensor(labelled, dtype=torch.bool, device=mask.device)[:, None]


def is_host_layout(batch: dict) -> bool:
    """True for a batch as the loader delivers it (``(B, T, D)``, stored dtype)."""
    return batch.get(LAYOUT) == HOST_LAYOUT


def _channels_first_float(x: torch.Tensor) -> torch.Tensor:
    """``(B, T, D)`` of any dtype -> contiguous float32 ``(B, D, T)`` in one casting copy."""
    out = torch.empty(x.shape[0], x.shape[2], x.shape[1], dtype=torch.float32, device=x.device)
    return out.copy_(x.transpose(1, 2))


def to_model_layout(batch: dict[str, Any], device: torch.device | str | None = None) -> dict[str, Any]:
    """The model-layout batch of a host-layout one (a new dict; the input is not changed).

    With ``device`` the host tensors are moved there first (non-blocking when pinned), so
    the widening and transposing copy runs on the device. A batch already in model layout
    is only moved. ``meta`` is moved too (its tensors), as Lightning's transfer does.
    """
    def move(v: Any) -> Any:
        if device is not None and isinstance(v, torch.Tensor):
            return v.to(device, non_blocking=v.is_pinned())
        return v

    host = is_host_layout(batch)
    out: dict[str, Any] = {}
    for key, value in batch.items():
        if key == LAYOUT:
            continue
        if key == META:
            out[key] = {k: move(v) for k, v in value.items()}
            continue
        value = move(value)
        if host and key != MASK:
            value = _channels_first_float(value)
        out[key] = value
    return out


def mix_videos(batch: dict[str, Any], alpha: float, lam: torch.Tensor | None = None,
               perm: torch.Tensor | None = None) -> dict[str, Any]:
    """Mixup of a model-layout batch (module docstring): a new dict, modalities and labels
    mixed. ``alpha <= 0`` or a batch of one video gives it back unmixed. ``lam (B,)`` and
    ``perm (B,)`` replace the draws (for tests); ``lam`` is folded to ``max(λ, 1 − λ)``."""
    mask: torch.Tensor = batch[MASK]
    n = mask.shape[0]
    if alpha <= 0 or n < 2:
        return dict(batch)
    if perm is None:
        perm = torch.randperm(n).to(mask.device)
    if lam is None:
        lam = torch.distributions.Beta(float(alpha), float(alpha)).sample((n,)).to(mask.device)
    lam = torch.maximum(lam, 1 - lam)
    w = torch.where(mask & mask[perm], lam[:, None], torch.ones_like(lam)[:, None]).unsqueeze(1)  # (B, 1, T)
    out = dict(batch)
    for key in [*modalities_in(batch), LABELS]:
        if key in batch:
            x = batch[key]
            out[key] = (w * x + (1 - w) * x[perm]).to(x.dtype)
    return out


def stretch_videos(batch: dict[str, Any], max_rate: float, rates: torch.Tensor | None = None) -> dict[str, Any]:
    """Each video of a model-layout batch resampled in time (module docstring): a new dict
    with new modalities, labels and mask (``meta`` as it was). ``max_rate <= 1`` gives the
    batch back unchanged; ``rates (B,)`` replace the draws (for tests). A video's valid
    steps must be a prefix of its row (the loader's padding is at the end)."""
    mask: torch.Tensor = batch[MASK]
    if max_rate <= 1:
        return dict(batch)
    n, device = mask.shape[0], mask.device
    if rates is None:
        span = math.log(float(max_rate))
        rates = torch.empty(n).uniform_(-span, span).exp()
    rates = torch.as_tensor(rates, dtype=torch.float64).cpu()
    lengths = mask.sum(1).cpu()
    new_lengths = [max(1, round(int(length) / float(r))) if int(length) > 0 else 0
                   for length, r in zip(lengths, rates)]
    width = max(max(new_lengths), 1)
    lo = torch.zeros(n, width, dtype=torch.long)
    frac = torch.zeros(n, width, dtype=torch.float32)
    near = torch.zeros(n, width, dtype=torch.long)
    new_mask = torch.zeros(n, width, dtype=torch.bool)
    for i, (length, new) in enumerate(zip(lengths.tolist(), new_lengths)):
        if new == 0:
            continue
        u = (torch.arange(new, dtype=torch.float64) * ((length - 1) / (new - 1))) if new > 1 \
            else torch.zeros(1, dtype=torch.float64)
        base = u.floor().clamp(max=max(length - 2, 0)).long()
        lo[i, :new], frac[i, :new] = base, (u - base).float().clamp(0.0, 1.0)
        near[i, :new] = u.round().long().clamp(max=length - 1)
        new_mask[i, :new] = True
    lo, frac, near, new_mask = lo.to(device), frac.to(device), near.to(device), new_mask.to(device)
    hi = (lo + 1).clamp(max=mask.shape[1] - 1)
    keep = new_mask[:, None, :]
    out = dict(batch)
    out[MASK] = new_mask
    for key in modalities_in(batch):
        x = batch[key]
        y = _steps(x, lo) * (1 - frac[:, None, :]) + _steps(x, hi) * frac[:, None, :]
        out[key] = torch.where(keep, y, 0.0).to(x.dtype)
    if LABELS in batch:
        y = batch[LABELS]
        out[LABELS] = torch.where(keep, _steps(y, near), 0).to(y.dtype)
    return out


def _steps(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``x (B, D, T)`` read at the steps ``index (B, T')``: ``(B, D, T')``."""
    return x.gather(2, index[:, None, :].expand(-1, x.shape[1], -1))
