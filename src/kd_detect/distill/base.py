"""The distillation-plugin contract (DESIGN.md §2–§3).

Every distillation loss is a :class:`DistillationLoss`: an ``nn.Module`` with a
``weight``; the student module calls :meth:`setup` once with the student/teacher
feature dims and the class count (so the plugin can build projection heads, which it
owns: the optimiser, DDP and checkpoints see them), then calls it with the student's
and the teacher's :class:`~kd_detect.models.heads.base.HeadOutput` and the valid-step
mask. It returns the **unweighted** scalar loss; the module multiplies by ``weight``.

Rules every plugin follows:

* no gradient ever reaches the teacher (inputs are detached here, again, for safety);
* padded steps (``mask == False``) change nothing;
* computations that overflow in half precision (softmax, KL, norms) run in fp32.
"""

from __future__ import annotations

from typing import Callable, TypeVar

import torch
from torch import Tensor, nn

from kd_detect.models.heads.base import HeadOutput

REGISTRY: dict[str, type["DistillationLoss"]] = {}
T = TypeVar("T", bound=type)


def register(name: str) -> Callable[[T], T]:
    """Class decorator: make a plugin findable by a short name (``REGISTRY[name]``)."""

    def wrap(cls: T) -> T:
        if name in REGISTRY and REGISTRY[name] is not cls:
            raise KeyError(f"distillation plugin name {name!r} already registered by {REGISTRY[name]}")
        REGISTRY[name] = cls
        cls.registry_name = name
        return cls

    return wrap


class DistillationLoss(nn.Module):
    """Base class of all distillation plugins.

    Args:
        weight: multiplier of this loss in the total objective (``λ`` in DESIGN.md §3).
    """

    registry_name: str = ""

    def __init__(self, weight: float = 1.0) -> None:
        super().__init__()
        self.weight = float(weight)
        self.student_dim: int | None = None
        self.teacher_dim: int | None = None
        self.num_classes: int | None = None

    @property
    def is_setup(self) -> bool:
        return self.student_dim is not None

    def setup(self, student_dim: int, teacher_dim: int, num_classes: int) -> None:
        """Learn the dims. Subclasses with learnable parts override :meth:`build`."""
        if self.is_setup:
            if (self.student_dim, self.teacher_dim, self.num_classes) != (student_dim, teacher_dim, num_classes):
                raise ValueError(
                    f"{type(self).__name__} was set up for dims {(self.student_dim, self.teacher_dim, self.num_classes)}, "
                    f"now asked for {(student_dim, teacher_dim, num_classes)}"
                )
            return
        self.student_dim, self.teacher_dim, self.num_classes = student_dim, teacher_dim, num_classes
        self.build(student_dim, teacher_dim, num_classes)

    def build(self, student_dim: int, teacher_dim: int, num_classes: int) -> None:
        """Create projection heads / regressors. Default: nothing learnable."""

    def forward(self, student: HeadOutput, teacher: HeadOutput, mask: Tensor) -> Tensor:
        """Unweighted loss. ``student``/``teacher``: ``features (B,F,T)``, ``logits (B,C,T)``;
        ``mask``: ``(B, T)`` bool. Implementations call :meth:`loss` on detached teacher."""
        if not self.is_setup:
            raise RuntimeError(f"{type(self).__name__}.setup(student_dim, teacher_dim, num_classes) was not called")
        return self.loss(student, teacher.detach(), mask.bool())

    def loss(self, student: HeadOutput, teacher: HeadOutput, mask: Tensor) -> Tensor:  # pragma: no cover
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"weight={self.weight}"
