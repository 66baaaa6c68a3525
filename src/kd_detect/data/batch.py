"""The batch contract between the DataModule, the modules and the plugins (DESIGN.md §2).

A batch is a plain ``dict``::

    {
        "<modality>": FloatTensor (B, D_m, T)   # one key per loaded modality, padded with 0
        "labels":     FloatTensor (B, C, T)     # multi-hot, 0 on padding
        "mask":       BoolTensor  (B, T)        # True on valid steps
        "meta": {
            "video_id": list[str],              # B ids
            "duration": FloatTensor (B,)        # seconds, whole video
            "length":   LongTensor  (B,)        # T of the whole video in the file
            "offset":   LongTensor  (B,)        # first step of the (cropped) window
            "segments": list[np.ndarray]        # B arrays (N_b, 3) [class, start_s, end_s]
        },
    }

At evaluation time windows are whole videos (``offset == 0`` and
``mask.sum(1) == length``); at training time ``max_steps`` may crop a random window.
"""

from __future__ import annotations

LABELS = "labels"
MASK = "mask"
META = "meta"
NON_MODALITY_KEYS = frozenset({LABELS, MASK, META})


def modalities_in(batch: dict) -> list[str]:
    """The modality keys present in a batch."""
    return [k for k in batch if k not in NON_MODALITY_KEYS]
