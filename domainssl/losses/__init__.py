"""SSL losses: plain nn.Modules with shape checks; cross-process gathering lives here."""

from domainssl.losses.infonce_queue import QueueInfoNCELoss
from domainssl.losses.negative_cosine import NegativeCosineLoss
from domainssl.losses.ntxent import NTXentLoss

__all__ = ["NTXentLoss", "NegativeCosineLoss", "QueueInfoNCELoss"]
