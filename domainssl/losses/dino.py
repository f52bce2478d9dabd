"""DINO's self-distillation loss (Caron et al. 2021), as in the released code.

The teacher's outputs for the global crops are centered and sharpened (softmax at the
teacher temperature); each student crop is trained to predict them (cross-entropy at the
student temperature) except the crop the teacher saw itself. The center is an EMA of the
teacher outputs' batch mean, averaged over all processes.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from domainssl.losses.gather import world
from domainssl.losses.precision import in_float32


class DINOLoss(nn.Module):
    """Cross-entropy of student crops against the centered, sharpened teacher.

    Args:
        out_dim: prototypes (the head's output size).
        student_temperature: DINO: 0.1.
        center_momentum: EMA momentum of the center (DINO: 0.9).
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
        self, teacher: torch.Tensor, student: torch.Tensor, teacher_temperature: float
    ) -> torch.Tensor:
        """Loss of ``teacher`` outputs (G, B, K) for the G global crops and ``student``
        outputs (V, B, K) for all V crops, the same G global crops first; then the center
        moves towards the teacher outputs' mean."""
        if teacher.ndim != 3 or student.shape[1:] != teacher.shape[1:] or len(student) <= 1:
            raise ValueError(f"shapes do not fit: teacher {teacher.shape}, student {student.shape}")
        targets = F.softmax((teacher.detach() - self.center) / teacher_temperature, dim=-1)
        log_probs = F.log_softmax(student / self.student_temperature, dim=-1)
        total, terms = student.new_zeros(()), 0
        for g in range(len(targets)):
            for v in range(len(log_probs)):
                if v == g:
                    continue  # a crop does not predict itself
                total = total + (-targets[g] * log_probs[v]).sum(dim=-1).mean()
                terms += 1
        self.update_center(teacher.detach().flatten(0, 1))
        return total / terms

    @torch.no_grad()
    def update_center(self, teacher: torch.Tensor) -> None:
        """center <- m center + (1 - m) mean of the teacher outputs of all processes."""
        total = teacher.sum(dim=0, keepdim=True)
        count = torch.tensor(float(len(teacher)), device=teacher.device)
        if world()[1] > 1:
            dist.all_reduce(total)
            dist.all_reduce(count)
        momentum = self.center_momentum
        self.center.mul_(momentum).add_(total / count, alpha=1 - momentum)
