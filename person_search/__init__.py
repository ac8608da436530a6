"""Person search (joint detection and identification with OIM) as a detectron2 plugin.

Importing this package adapts detectron2 to the installed stack (see :mod:`person_search.compat`) and registers
the plugin's ROI heads, meta-architectures, datasets and evaluators in detectron2's registries.
"""
from . import compat

compat.apply()

from .config import add_person_search_config  # noqa: E402
from . import modeling  # noqa: E402,F401  (registers ROI heads, identity losses, meta-architectures)
from . import data  # noqa: E402,F401  (registers datasets)
from . import evaluation  # noqa: E402,F401

__version__ = "0.1.0"
__all__ = ["add_person_search_config", "__version__"]
