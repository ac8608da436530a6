"""Dataset mapper for person search: detectron2's resize / flip pipeline with person ids kept next to the boxes."""
import copy
import logging

import numpy as np
import torch
from detectron2.config import configurable
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T
from detectron2.structures import Boxes, BoxMode, Instances

from .image_io import read_image_file

__all__ = ["ImageTooThinError", "PersonSearchDatasetMapper"]


class ImageTooThinError(ValueError):
    """A picture the resize leaves without a pixel row or column (a strip a few pixels thin whose long side is
    capped at the maximum size): detectron2's resize fails on it."""


class PersonSearchDatasetMapper:
    """Map a person-search dataset dict to the model's input.

    Training: reads the image, applies the augmentations (by default ResizeShortestEdge and RandomFlip from
    ``cfg.INPUT``) and returns ``image`` and ``instances`` with ``gt_boxes``, ``gt_classes`` and ``gt_pids``
    (int64 person ids, -1 unlabeled), empty boxes removed from all three together. Every annotation needs a
    ``person_id`` (-1 for a person without identity); crowd annotations (``iscrowd`` 1) are dropped, as
    detectron2's DatasetMapper does.

    Inference: returns ``image`` (resized), the original ``height`` / ``width``, the dict's other fields
    (``image_id``, ``file_name``, ``query_box``, ``query_id``, ``person_id``, ``camera_id``, ...) and, for a query
    dict (one with ``query_box``) or for a gallery dict when ``gallery_gt_boxes`` is True, ``given_instances``:
    the query box or the ground-truth boxes (annotation order) in resized-image coordinates as ``pred_boxes``,
    with ``pred_classes`` 0 and ``scores`` 1, ready for ``model.inference(..., detected_instances=...)``.
    """

    @configurable
    def __init__(self, is_train, *, augmentations, image_format, gallery_gt_boxes=False):
        """
        Args:
            is_train: training (annotations become ``instances``) or inference (``given_instances``).
            augmentations: detectron2 augmentations or transforms applied to image and boxes.
            image_format: an image format supported by :func:`detectron2.data.detection_utils.read_image`
                (images are read with :func:`person_search.data.read_image_file`).
            gallery_gt_boxes: at inference, also give the ground-truth boxes of gallery images, to compute
                their embeddings on ground truth (the "GT boxes" evaluation).
        """
        self.is_train = is_train
        self.augmentations = T.AugmentationList(augmentations)
        self.image_format = image_format
        self.gallery_gt_boxes = gallery_gt_boxes
        mode = "training" if is_train else "inference"
        logging.getLogger(__name__).info(f"[PersonSearchDatasetMapper] Augmentations used in {mode}: {augmentations}")

    @classmethod
    def from_config(cls, cfg, is_train=True, gallery_gt_boxes=False):
        # ResizeShortestEdge(MIN_SIZE_*, MAX_SIZE_*, sampling) + RandomFlip(INPUT.RANDOM_FLIP) when training.
        return {
            "is_train": is_train,
            "augmentations": utils.build_augmentation(cfg, is_train),
            "image_format": cfg.INPUT.FORMAT,
            "gallery_gt_boxes": gallery_gt_boxes,
        }

    def __call__(self, dataset_dict):
        return self.map_image(dataset_dict, read_image_file(dataset_dict["file_name"], self.image_format))

    def map_image(self, dataset_dict, image):
        """What ``__call__`` returns, for an image already decoded in the mapper's format (e.g. a video frame)."""
        dataset_dict = copy.deepcopy(dataset_dict)  # modified below
        utils.check_image_size(dataset_dict, image)
        aug_input = T.AugInput(image)
        try:
            transforms = self.augmentations(aug_input)
        except ValueError as e:  # what PIL's resize raises for a target size of 0
            height, width = image.shape[:2]
            raise ImageTooThinError(
                f"{dataset_dict.get('file_name')}: {width}x{height} pixels is too thin for the resize ({e})"
            ) from e
        image = aug_input.image
        image_shape = image.shape[:2]  # h, w
        dataset_dict["image"] = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))

        annotations = dataset_dict.pop("annotations", [])
        if self.is_train:
            annotations = [a for a in annotations if a.get("iscrowd", 0) == 0]
            missing = sum("person_id" not in a for a in annotations)
            if missing:
                raise ValueError(
                    f"{dataset_dict.get('file_name')}: {missing} of {len(annotations)} annotations have no "
                    "'person_id'; the identity branch needs one per person (-1 for a person without identity)"
                )
            dataset_dict["instances"] = self._training_instances(annotations, transforms, image_shape)
            return dataset_dict
        if "query_box" in dataset_dict:
            boxes = [{"bbox": dataset_dict["query_box"], "bbox_mode": BoxMode.XYXY_ABS}]
            dataset_dict["given_instances"] = self._given_instances(boxes, transforms, image_shape)
        elif self.gallery_gt_boxes:
            dataset_dict["given_instances"] = self._given_instances(annotations, transforms, image_shape)
        return dataset_dict

    @staticmethod
    def _training_instances(annotations, transforms, image_shape):
        annos = [utils.transform_instance_annotations(a, transforms, image_shape) for a in annotations]
        instances = utils.annotations_to_instances(annos, image_shape)
        # Set before filtering so that filter_empty_instances drops ids together with their boxes.
        instances.gt_pids = torch.tensor([a["person_id"] for a in annos], dtype=torch.int64)
        return utils.filter_empty_instances(instances)

    @staticmethod
    def _given_instances(annotations, transforms, image_shape):
        annos = [utils.transform_instance_annotations(copy.copy(a), transforms, image_shape) for a in annotations]
        boxes = np.array([a["bbox"] for a in annos], dtype=np.float32).reshape(-1, 4)
        instances = Instances(image_shape)
        instances.pred_boxes = Boxes(torch.as_tensor(boxes))
        instances.pred_classes = torch.zeros(len(boxes), dtype=torch.int64)
        instances.scores = torch.ones(len(boxes), dtype=torch.float32)
        return instances
