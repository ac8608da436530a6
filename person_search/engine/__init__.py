"""Training and evaluation: the detectron2 trainer of the plugin."""
from .train_loop import MixedPrecisionTrainer, amp_dtype_from_config
from .trainer import PersonSearchTrainer, ResumableTrainingSampler, require_datasets

__all__ = [
    "MixedPrecisionTrainer",
    "PersonSearchTrainer",
    "ResumableTrainingSampler",
    "amp_dtype_from_config",
    "require_datasets",
]
