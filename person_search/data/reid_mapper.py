"""Dataset mapper for crop re-ID: every crop resized to one size, with flip / pad + random crop when training."""
import copy
import logging

import numpy as np
import torch
from detectron2.config import configurable
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T

from .image_io import read_image_file

__all__ = ["ReIDCropMapper", "Pad"]


class Pad(T.Augmentation):
    """Pad the image by ``padding`` pixels of ``pad_value`` on every side (as a detectron2 augmentation)."""

    def __init__(self, padding, pad_value=0):
        super().__init__()
        if padding < 0:
            raise ValueError(f"Pad: padding must be >= 0, got {padding}")
        self.padding = int(padding)
        self.pad_value = pad_value

    def get_transform(self, image):
        h, w = image.shape[:2]
        p = self.padding
        return T.PadTransform(p, p, p, p, orig_w=w, orig_h=h, pad_value=self.pad_value)


class ReIDCropMapper:
    """Map a re-ID crop record (see :mod:`person_search.data.reid_datasets`) to the model's input.

    Returns the record's fields with ``image`` (C, H, W) uint8 tensor of ``INPUT.REID_CROP_SIZE`` added.
    Training augmentations (from the config): resize, random horizontal flip (``INPUT.RANDOM_FLIP``), zero padding
    of ``INPUT.REID_CROP_PADDING`` pixels and a random crop back to the crop size; inference only resizes.
    """

    @configurable
    def __init__(self, is_train, *, augmentations, image_format):
        """
        Args:
            is_train: whether the record must carry ``person_id`` (training) or not.
            augmentations: detectron2 augmentations applied to the image.
            image_format: an image format supported by :func:`detectron2.data.detection_utils.read_image`
                (images are read with :func:`person_search.data.read_image_file`).
        """
        self.is_train = is_train
        self.augmentations = T.AugmentationList(augmentations)
        self.image_format = image_format
        mode = "training" if is_train else "inference"
        logging.getLogger(__name__).info(f"[ReIDCropMapper] Augmentations used in {mode}: {augmentations}")

    @classmethod
    def from_config(cls, cfg, is_train=True):
        height, width = cfg.INPUT.REID_CROP_SIZE
        augmentations = [T.Resize((height, width))]
        if is_train:
            if cfg.INPUT.RANDOM_FLIP != "none":
                augmentations.append(
                    T.RandomFlip(
                        horizontal=cfg.INPUT.RANDOM_FLIP == "horizontal",
                        vertical=cfg.INPUT.RANDOM_FLIP == "vertical",
                    )
                )
            if cfg.INPUT.REID_CROP_PADDING > 0:
                augmentations.append(Pad(cfg.INPUT.REID_CROP_PADDING))
                augmentations.append(T.RandomCrop("absolute", (height, width)))
        return {"is_train": is_train, "augmentations": augmentations, "image_format": cfg.INPUT.FORMAT}

    def __call__(self, dataset_dict):
        dataset_dict = copy.copy(dataset_dict)  # the record holds only immutable values
        if self.is_train and "person_id" not in dataset_dict:
            raise ValueError(f"re-ID training record '{dataset_dict.get('file_name')}' has no person_id")
        image = read_image_file(dataset_dict["file_name"], self.image_format)
        utils.check_image_size(dataset_dict, image)
        aug_input = T.AugInput(image)
        self.augmentations(aug_input)
        dataset_dict["image"] = torch.as_tensor(np.ascontiguousarray(aug_input.image.transpose(2, 0, 1)))
        return dataset_dict
