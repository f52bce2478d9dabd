"""iBOT's masked patch-token distillation (Zhou et al. 2022), as in the released code: on
each global crop, the student (which saw some patches replaced by a mask token) predicts the
teacher's centered, sharpened output for those patches; the loss of an image is the mean
over its masked patches (0 when none was masked), averaged over images and crops. The patch
center is an EMA of the teacher's patch outputs, averaged over all processes."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from domainssl.losses.gather import world
from domainssl.losses.precision import in_float32


class MaskedPatchDistillation(nn.Module):
    """Cross-entropy of student patch tokens against the teacher's, on masked patches.

    Args:
        out_dim: prototypes of the patch head.
        student_temperature: iBOT: 0.1.
        center_momentum: EMA momentum of the patch center (iBOT: 0.9).
    """

    center: torch.Tensor

    def __init__(
        self, out_dim: int, student_temperature: float = 0.1, center_momentum: float = 0.9
    ) -> None:
        super().__init__()
        self.student_temperature = student_temperature
        self.center_momentum = center_momentum
        self.register_buffer("center", torch.zeros(1, out_dim))

    @in_float32
    def forward(
        self,
        teacher: torch.Tensor,
        student: torch.Tensor,
        masks: torch.Tensor,
        teacher_temperature: float,
    ) -> torch.Tensor:
        """``teacher``, ``student``: patch outputs (G, B, N, K) of the G global crops;
        ``masks`` (G, B, N): 1 where the student's patch was masked."""
        if teacher.shape != student.shape or masks.shape != teacher.shape[:3]:
            raise ValueError(
                f"shapes do not fit: teacher {teacher.shape}, student {student.shape}, "
                f"masks {masks.shape}"
            )
        targets = F.softmax((teacher.detach() - self.center) / teacher_temperature, dim=-1)
        log_probs = F.log_softmax(student / self.student_temperature, dim=-1)
        per_patch = -(targets * log_probs).sum(dim=-1)  # (G, B, N)
        masks = masks.float()
        per_image = (per_patch * masks).sum(dim=-1) / masks.sum(dim=-1).clamp(min=1.0)
        self.update_center(teacher.detach())
        return per_image.mean()

    @torch.no_grad()
    def update_center(self, teacher: torch.Tensor) -> None:
        """center <- m center + (1 - m) mean patch output of all processes."""
        flat = teacher.reshape(-1, teacher.shape[-1])
        total = flat.sum(dim=0, keepdim=True)
        count = torch.tensor(float(len(flat)), device=flat.device)
        if world()[1] > 1:
            dist.all_reduce(total)
            dist.all_reduce(count)
        momentum = self.center_momentum
        self.center.mul_(momentum).add_(total / count, alpha=1 - momentum)
