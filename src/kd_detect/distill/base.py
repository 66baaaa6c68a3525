"""The distillation-plugin contract (DESIGN.md §2–§3).

Every distillation loss is a :class:`DistillationLoss`: an ``nn.Module`` with a
``weight``; the student module calls :meth:`setup` once with the student/teacher
feature dims and the class count (so the plugin can build projection heads, which it
owns: the optimiser, DDP and checkpoints see them), then calls it with the student's
and the teacher's :class:`~kd_detect.models.heads.base.HeadOutput`, the valid-step
mask and the batch's training labels. It returns the **unweighted** scalar loss; the
module multiplies by ``weight``. Plugins are named in the experiment YAML by their
``class_path`` (e.g. ``kd_detect.distill.AtomicContrastive``), the one naming system.

Rules every plugin follows:

* no gradient ever reaches the teacher (inputs are detached here, again, for safety);
* padded steps (``mask == False``) change nothing;
* computations that overflow in half precision (softmax, KL, norms) run in fp32.

**Labels (optional context).** ``forward(student, teacher, mask, labels=None)`` takes the
batch's labels ``(B, C, T)``; the student always passes them. A plugin that uses them sets
``needs_labels = True`` and implements ``loss(student, teacher, mask, labels)``; every
other plugin keeps the three-argument ``loss(student, teacher, mask)`` and never sees them.

**How the teacher's features are read (``teacher_view``).** A cross-fitted teacher
(``kd_detect.modules.cross_fit``) gives each video the features of one of several fold
teachers, so one batch may hold features of different networks. Each plugin says what that
means for it:

* ``"logits"``: it reads the teacher's class logits only, one space for every teacher;
* ``"video"``: each video's target comes from that video's teacher features alone, with
  nothing learnt on the teacher's side, so the term of a video is the same whoever read the
  others (global relation, boundary saliency, SP, AT);
* ``"space"`` (the default, the cautious reading for a new plugin): teacher features of
  different videos meet, in a comparison or in a learned map that every video trains, so
  they must share one basis (atomic contrast and CRD through their teacher projection,
  FitNets, MARS, RKD, PKT).

The student refuses a ``"space"`` plugin on fold teachers that started from different
seeds, whose bases are unrelated.

**Automatic weight (``weight: auto``).** Instead of a number, ``weight: auto`` scales the
term to a set share ``ρ`` (the student's ``auto_share``) of the detection loss's gradient
norm at the student's features ``S``:

    λ_k = ρ · mean_n ‖∂L_BCE/∂S‖ / mean_n ‖∂L_k/∂S‖

with the means running over the first ``N`` training steps (the student's ``auto_warmup``;
during those steps the running estimate is used), then fixed. The step count and both sums
are buffers (``auto_state``), so a checkpoint or a resumed run keeps the resolved weight;
the student averages the norms over DDP ranks before :meth:`auto_observe`. YAML::

    distill:
      atomic: {class_path: kd_detect.distill.AtomicContrastive, init_args: {weight: auto}}
"""

from __future__ import annotations

import math
from typing import Literal, Union

import torch
from torch import Tensor, nn

from kd_detect.models.heads.base import HeadOutput

#: a plugin weight: a number ``λ``, or ``"auto"`` (see the module docstring)
Weight = Union[float, Literal["auto"]]
#: how a plugin reads the teacher's features (see the module docstring)
TeacherView = Literal["logits", "video", "space"]


class DistillationLoss(nn.Module):
    """Base class of all distillation plugins.

    Args:
        weight: multiplier of this loss in the total objective (``λ`` in DESIGN.md §3), or
            ``"auto"``: balanced against the detection loss's gradient (module docstring).
    """

    #: ``True``: :meth:`loss` takes the batch's ``labels (B, C, T)`` as a fourth argument
    needs_labels: bool = False
    #: ``"logits"``, ``"video"`` or ``"space"``: see "How the teacher's features are read"
    teacher_view: TeacherView = "space"

    def __init__(self, weight: Weight = 1.0) -> None:
        super().__init__()
        self.auto = isinstance(weight, str)
        if self.auto and weight != "auto":
            raise ValueError(f"weight must be a number or 'auto', got {weight!r}")
        self._weight = 1.0 if self.auto else float(weight)
        self.auto_share, self.auto_warmup = 0.5, 50
        if self.auto:  # only auto plugins carry the state: fixed-weight checkpoints are unchanged
            self.register_buffer("auto_state", torch.zeros(3, dtype=torch.float64))  # [n, Σ‖∇BCE‖, Σ‖∇L_k‖]
        self.student_dim: int | None = None
        self.teacher_dim: int | None = None
        self.num_classes: int | None = None

    # ------------------------------------------------------------------ weight
    @property
    def weight(self) -> float:
        """``λ``: the fixed number, or for ``auto`` the resolved (or, during the warm-up,
        the running) ratio; ``nan`` for ``auto`` before the first observation."""
        if not self.auto:
            return self._weight
        n, g_det, g_term = (float(v) for v in self.auto_state)
        if n == 0:
            return math.nan
        return self.auto_share * g_det / g_term if g_term > 0 else 0.0

    @weight.setter
    def weight(self, value: float) -> None:
        self.auto = False
        self._weight = float(value)

    @property
    def weight_repr(self) -> str:
        return "auto" if self.auto else str(self._weight)

    @property
    def is_active(self) -> bool:
        """Whether the student computes this term at all (an auto weight always is)."""
        return self.auto or self._weight != 0.0

    @property
    def auto_resolved(self) -> bool:
        """``auto`` and its warm-up is over: the weight is fixed."""
        return self.auto and float(self.auto_state[0]) >= self.auto_warmup

    def configure_auto(self, share: float, warmup: int) -> None:
        """The student's ``auto_share`` ``ρ`` and ``auto_warmup`` ``N``."""
        if share <= 0 or warmup < 1:
            raise ValueError(f"auto_share must be > 0 and auto_warmup >= 1, got {share}, {warmup}")
        self.auto_share, self.auto_warmup = float(share), int(warmup)

    def auto_observe(self, grad_detect: float, grad_term: float) -> None:
        """Add one step's ``‖∂L_BCE/∂S‖`` and ``‖∂L_k/∂S‖`` (already averaged over ranks);
        ignored once the warm-up is over."""
        if not self.auto or self.auto_resolved:
            return
        self.auto_state += torch.tensor([1.0, grad_detect, grad_term], dtype=self.auto_state.dtype,
                                        device=self.auto_state.device)

    # ------------------------------------------------------------------ setup & call
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

    def forward(self, student: HeadOutput, teacher: HeadOutput, mask: Tensor, labels: Tensor | None = None) -> Tensor:
        """Unweighted loss. ``student``/``teacher``: ``features (B,F,T)``, ``logits (B,C,T)``;
        ``mask``: ``(B, T)`` bool; ``labels``: ``(B, C, T)``, passed on only to plugins with
        :attr:`needs_labels`. Implementations call :meth:`loss` on detached teacher."""
        if not self.is_setup:
            raise RuntimeError(f"{type(self).__name__}.setup(student_dim, teacher_dim, num_classes) was not called")
        if self.needs_labels:
            if labels is None:
                raise ValueError(f"{type(self).__name__} needs the batch's labels (B, C, T); none were given")
            return self.loss(student, teacher.detach(), mask.bool(), labels.detach())
        return self.loss(student, teacher.detach(), mask.bool())

    def loss(self, student: HeadOutput, teacher: HeadOutput, mask: Tensor) -> Tensor:  # pragma: no cover
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"weight={self.weight_repr}"
