"""Distillation from the dense teacher (DeiT-style): soft with a temperature, or hard."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..settings import DISTILLATION_TYPES

__all__ = ["DistillationLoss"]


class DistillationLoss(nn.Module):
    """``(1 - alpha) * CE(student, y) + alpha * distill(student_dist, teacher)``.

    ``kind``: "none" (plain cross-entropy), "soft" (``tau² · KL(student/tau ‖ teacher/tau)``,
    as DeiT) or "hard" (cross-entropy against the teacher's argmax). When the student has a
    distillation token it returns ``(cls_logits, dist_logits)`` in training; the
    distillation term then reads the distillation head, as in DeiT. The teacher runs in
    eval mode without gradients.
    """

    def __init__(self, teacher: nn.Module | None, kind: str = "soft", alpha: float = 0.1, tau: float = 1.0,
                 label_smoothing: float = 0.0):
        super().__init__()
        if kind not in DISTILLATION_TYPES:
            raise ValueError(f"DistillationLoss: kind must be one of {DISTILLATION_TYPES}, got {kind!r}")
        if kind != "none" and teacher is None:
            raise ValueError(f"DistillationLoss: kind={kind!r} needs a teacher model")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"DistillationLoss: alpha must be in [0, 1], got {alpha}")
        if tau <= 0:
            raise ValueError(f"DistillationLoss: tau must be > 0, got {tau}")
        self.teacher = teacher if kind != "none" else None
        if self.teacher is not None:
            self.teacher.eval().requires_grad_(False)
        self.kind, self.alpha, self.tau, self.label_smoothing = kind, alpha, tau, label_smoothing

    def train(self, mode: bool = True) -> "DistillationLoss":
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()  # the teacher never trains: no dropout, frozen norms
        return self

    def forward(self, images: torch.Tensor, outputs, labels: torch.Tensor) -> torch.Tensor:
        cls_out, dist_out = outputs if isinstance(outputs, (tuple, list)) else (outputs, outputs)
        base = F.cross_entropy(cls_out, labels, label_smoothing=self.label_smoothing)
        if self.kind == "none":
            return base
        with torch.no_grad():
            t = self.teacher(images)
            if isinstance(t, (tuple, list)):
                t = (t[0] + t[1]) / 2
        if self.kind == "soft":
            T = self.tau
            distill = F.kl_div(F.log_softmax(dist_out / T, dim=1), F.log_softmax(t / T, dim=1),
                               reduction="batchmean", log_target=True) * (T * T)
        else:
            distill = F.cross_entropy(dist_out, t.argmax(dim=1))
        return (1 - self.alpha) * base + self.alpha * distill
