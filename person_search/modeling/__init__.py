"""Modeling: identity losses, the embedding head and ROI heads with an identity branch (registered on import)."""
from .embedding_head import IdentityEmbeddingHead
from .identity_losses import IDENTITY_LOSS_REGISTRY, OIMLoss, SoftmaxIdentityLoss, build_identity_loss
from .memory_format import apply_memory_format
from .roi_heads import ReIDRes5ROIHeads, ReIDStandardROIHeads
from .crop_reid import ReIDCropNet  # noqa: F401  (registers the crop re-ID meta-architecture)

__all__ = [
    "IDENTITY_LOSS_REGISTRY",
    "IdentityEmbeddingHead",
    "OIMLoss",
    "ReIDRes5ROIHeads",
    "ReIDStandardROIHeads",
    "SoftmaxIdentityLoss",
    "apply_memory_format",
    "build_identity_loss",
]
