"""SSL methods: one LightningModule per method on the shared base in ``base.py``.

Importing this package imports every module and package in it, so each method registers
itself (:mod:`domainssl.methods.registry`): adding a method is adding its file.
"""

import importlib
import pkgutil

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
