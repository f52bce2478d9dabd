"""ORL (Xie et al. 2021): object-level representation learning in three stages.

``module``: the stage-3 LightningModule and the method's config; ``mining``: stage 2's
retrieval and pair mining; ``pairs``: mined pairs on disk and the samples carrying them;
``datamodule``: the images stage 2 mines among and the stage-3 data module; ``stages``: the
driver that runs the three stages under one run folder and budget.
"""

from domainssl.methods.orl.datamodule import ObjectPairsDataModule
from domainssl.methods.orl.module import ORL, ORLConfig
from domainssl.methods.orl.stages import run_orl_stages
from domainssl.methods.registry import register_method

register_method(
    ORLConfig,
    "object-level BYOL on mined cross-image RoI pairs (3 stages)",
    data=ObjectPairsDataModule,
    stages=run_orl_stages,
)(ORL)
