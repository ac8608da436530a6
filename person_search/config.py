"""Config keys added by the person-search plugin."""
from detectron2.config import CfgNode as CN

__all__ = ["add_person_search_config", "is_crop_reid"]


def is_crop_reid(cfg):
    """Whether ``cfg`` is a crop re-ID model (``ReIDCropNet``, cropped persons) rather than person search."""
    return cfg.MODEL.META_ARCHITECTURE == "ReIDCropNet"


def add_person_search_config(cfg):
    """Add every person-search key to a detectron2 config (in place). Call before ``merge_from_file``."""
    _C = cfg

    _C.MODEL.REID = CN()
    # Dimension of the L2-normalised identity embedding (the paper uses 256).
    _C.MODEL.REID.EMBED_DIM = 256
    # Identity loss: "OIM" (lookup table + unlabeled queue) or "Softmax" (a linear classifier over labeled ids).
    # Both are built from IDENTITY_LOSS_REGISTRY, so projects may register their own.
    _C.MODEL.REID.LOSS = "OIM"
    # Weight of the identity loss relative to the detection losses.
    _C.MODEL.REID.LOSS_WEIGHT = 1.0
    # Normalisation after the embedding's linear projection: "BN" (BatchNorm1d, helps OIM converge with a
    # randomly initialised projection) or "" (none). The embedding is L2-normalised afterwards in every case.
    _C.MODEL.REID.EMBED_NORM = "BN"
    # ReIDStandardROIHeads only: a second box-head-like tower for the identity branch ("" = share the box head's
    # features). Name of a ROI_BOX_HEAD_REGISTRY head built with the box head's config.
    _C.MODEL.REID.HEAD_NAME = ""
    # What the embedding of a detection is computed from at inference: "boxes" (its final, regressed box, pooled
    # and run through the head again) or "proposals" (ReIDRes5ROIHeads only: the features of the proposal it was
    # regressed from, already computed for the box branch; the test procedure of the paper's Caffe release, one
    # res5 pass instead of two). Query boxes are always embedded as given.
    _C.MODEL.REID.EMBED_DETECTIONS_FROM = "boxes"

    _C.MODEL.REID.OIM = CN()
    # Number of labeled identities = rows of the lookup table (CUHK-SYSU train: 5532, PRW train: 483).
    _C.MODEL.REID.OIM.NUM_LABELED = 5532
    # Length of the circular queue of unlabeled-person features (CUHK-SYSU: 5000, PRW: 500; 0 disables the queue,
    # the paper's "w/o unlabeled" ablation).
    _C.MODEL.REID.OIM.QUEUE_SIZE = 5000
    # Lookup-table update: row <- MOMENTUM * row + (1 - MOMENTUM) * feature, then re-normalised (paper: 0.5).
    _C.MODEL.REID.OIM.MOMENTUM = 0.5
    # Logit scale = 1 / temperature (the paper's temperature 0.1 gives 10; later systems use 30).
    _C.MODEL.REID.OIM.SCALAR = 10.0

    _C.MODEL.REID.SOFTMAX = CN()
    # Number of classes of the softmax baseline's classifier (the labeled identities).
    _C.MODEL.REID.SOFTMAX.NUM_CLASSES = 5532

    # Crop re-ID meta-architecture (ReIDCropNet): input size of the crops (height, width).
    _C.INPUT.REID_CROP_SIZE = (256, 128)
    # Crop re-ID training augmentation: zero padding on every side before a random crop back to REID_CROP_SIZE
    # (common re-ID practice: 10 pixels at 256x128; 0 disables pad + crop).
    _C.INPUT.REID_CROP_PADDING = 10

    _C.TEST.REID = CN()
    # Crops per batch and device of the crop re-ID test loader (query + gallery crops in one loader).
    _C.TEST.REID.IMS_PER_BATCH = 64

    _C.TEST.PERSON_SEARCH = CN()
    # CUHK-SYSU gallery size: 50, 100, 500, 1000, 2000, 4000 or -1 (the whole 6,978-image test set).
    _C.TEST.PERSON_SEARCH.GALLERY_SIZE = 100
    # PRW: drop gallery frames from the query's camera (the "cross-camera" / multi-view gallery).
    _C.TEST.PERSON_SEARCH.CROSS_CAMERA = False
    # Images per batch and device of the gallery and query test loaders (detectron2's test loaders use 1).
    # Larger batches are faster on a GPU; images of a batch are zero-padded to a common size, which changes
    # features near the padded border slightly, so results can differ a little from batch 1.
    _C.TEST.PERSON_SEARCH.IMS_PER_BATCH = 1
    # Detections below this score are ignored by the search and detection protocols.
    _C.TEST.PERSON_SEARCH.DET_THRESH = 0.5
    # Also evaluate with gallery embeddings computed on ground-truth boxes (the paper's "GT boxes" column).
    _C.TEST.PERSON_SEARCH.USE_GT_BOXES = False

    # Mixed precision of the training forward pass: "" (fp32), "bf16" or "fp16" (torch.autocast; fp16 adds a
    # GradScaler, saved in checkpoints). The OIM tables and logits stay fp32. detectron2's SOLVER.AMP.ENABLED True
    # with this key empty means "fp16", as in detectron2.
    _C.SOLVER.AMP_DTYPE = ""
    # Mixed precision of inference (evaluation, `person_search index` / `query`): "" (fp32), "bf16" or "fp16".
    # Boxes, scores and embeddings are returned in fp32. How closely embeddings follow fp32 inference depends on the
    # weights and input (benchmarks/model_speed.py --check; README there): on an H100, 1e-3 per component for a
    # random-init R50-C4 without training steps, 0.02-0.16 after BatchNorm statistics had drifted in lr-0 training
    # steps (before the embedding head computed in fp32); the demo's trained model keeps its search mAP.
    _C.TEST.AMP_DTYPE = ""
    # Convolution weights channels-last (NHWC) for training and inference: faster on GPUs with tensor cores, most
    # of all under AMP (person_search.modeling.apply_memory_format).
    _C.MODEL.CHANNELS_LAST = False
    return cfg
