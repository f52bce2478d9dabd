"""SSL methods: one LightningModule per method on the shared base in ``base.py``."""

from domainssl.methods.base import SSLMethod
from domainssl.methods.byol import BYOL
from domainssl.methods.mmgl import MMGL
from domainssl.methods.moco import MoCo
from domainssl.methods.orl import ORL
from domainssl.methods.simclr import SimCLR
from domainssl.methods.simsiam import SimSiam

METHODS: dict[str, type[SSLMethod]] = {
    "simclr": SimCLR,
    "moco": MoCo,
    "byol": BYOL,
    "simsiam": SimSiam,
    "mmgl": MMGL,
    "orl": ORL,
}

__all__ = ["BYOL", "METHODS", "MMGL", "ORL", "MoCo", "SSLMethod", "SimCLR", "SimSiam"]
