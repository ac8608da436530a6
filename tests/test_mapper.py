"""PersonSearchDatasetMapper: person ids stay with their boxes; query / GT boxes follow the resize."""
import numpy as np
import pytest
import torch
from PIL import Image

import person_search  # noqa: F401  (adapts detectron2 before its modules are imported)
from detectron2.config import get_cfg
from detectron2.data import transforms as T
from detectron2.structures import BoxMode
from person_search.data import PersonSearchDatasetMapper


@pytest.fixture
def image_file(tmp_path):
    path = tmp_path / "s1.jpg"
    Image.new("RGB", (200, 100), (10, 20, 30)).save(path)  # width 200, height 100
    return str(path)


def gallery_dict(image_file):
    boxes = [([10, 20, 50, 80], 3), ([60, 10, 60, 40], 7), ([100, 0, 190, 90], -1)]  # the second is empty
    return {
        "file_name": image_file,
        "image_id": "s1.jpg",
        "height": 100,
        "width": 200,
        "annotations": [
            {"bbox": b, "bbox_mode": BoxMode.XYXY_ABS, "category_id": 0, "person_id": p} for b, p in boxes
        ],
    }


def test_training_keeps_pids_aligned_under_flip_and_resize(image_file):
    augmentations = [T.ResizeShortestEdge(50, 1000), T.RandomFlip(prob=1.0)]  # scale 0.5, always flip
    mapper = PersonSearchDatasetMapper(is_train=True, augmentations=augmentations, image_format="BGR")
    out = mapper(gallery_dict(image_file))
    assert out["image"].shape == (3, 50, 100) and out["image"].dtype == torch.uint8
    instances = out["instances"]
    # Empty box removed with its pid; x' = 100 - x * 0.5 for the flip of a 100-wide image.
    assert instances.gt_pids.tolist() == [3, -1]
    assert instances.gt_pids.dtype == torch.int64
    np.testing.assert_allclose(instances.gt_boxes.tensor.numpy(), [[75, 10, 95, 40], [5, 0, 50, 45]])
    assert instances.gt_classes.tolist() == [0, 0]


def test_query_box_is_resized(image_file):
    mapper = PersonSearchDatasetMapper(is_train=False, augmentations=[T.ResizeShortestEdge(150, 1000)],
                                       image_format="BGR")
    query = {"file_name": image_file, "image_id": "s1.jpg", "height": 100, "width": 200,
             "query_box": [10.0, 20.0, 50.0, 80.0], "query_id": 4, "person_id": 4, "camera_id": 2}
    out = mapper(query)
    assert out["image"].shape == (3, 150, 300)
    assert (out["height"], out["width"], out["image_id"]) == (100, 200, "s1.jpg")
    assert (out["query_box"], out["query_id"], out["person_id"], out["camera_id"]) == ([10.0, 20.0, 50.0, 80.0],
                                                                                      4, 4, 2)
    given = out["given_instances"]
    assert given.image_size == (150, 300)
    np.testing.assert_allclose(given.pred_boxes.tensor.numpy(), [[15, 30, 75, 120]])
    assert given.pred_classes.tolist() == [0] and given.scores.tolist() == [1.0]


def test_gallery_given_instances_only_on_request(image_file):
    augmentations = [T.ResizeShortestEdge(200, 1000)]  # scale 2
    plain = PersonSearchDatasetMapper(is_train=False, augmentations=augmentations, image_format="BGR")
    assert "given_instances" not in plain(gallery_dict(image_file))
    with_gt = PersonSearchDatasetMapper(is_train=False, augmentations=augmentations, image_format="BGR",
                                        gallery_gt_boxes=True)
    given = with_gt(gallery_dict(image_file))["given_instances"]
    # All ground-truth boxes in annotation order, the empty one included (the evaluator aligns by index).
    np.testing.assert_allclose(given.pred_boxes.tensor.numpy(),
                               [[20, 40, 100, 160], [120, 20, 120, 80], [200, 0, 380, 180]])


def test_from_config(image_file):
    cfg = get_cfg()
    cfg.INPUT.MIN_SIZE_TRAIN = (60,)
    cfg.INPUT.MAX_SIZE_TRAIN = 1000
    cfg.INPUT.RANDOM_FLIP = "none"
    cfg.INPUT.MIN_SIZE_TEST = 120
    out = PersonSearchDatasetMapper(cfg, is_train=True)(gallery_dict(image_file))
    assert out["image"].shape == (3, 60, 120)
    np.testing.assert_allclose(out["instances"].gt_boxes.tensor.numpy()[0], [6, 12, 30, 48])
    test_mapper = PersonSearchDatasetMapper(cfg, is_train=False, gallery_gt_boxes=True)
    assert test_mapper.gallery_gt_boxes
    assert test_mapper(gallery_dict(image_file))["image"].shape == (3, 120, 240)


def test_training_drops_crowd_regions_and_names_annotations_without_person_id(image_file):
    mapper = PersonSearchDatasetMapper(is_train=True, augmentations=[], image_format="BGR")
    record = gallery_dict(image_file)
    record["annotations"][0]["iscrowd"] = 1  # a crowd region is no person (detectron2's DatasetMapper drops it)
    assert mapper(record)["instances"].gt_pids.tolist() == [-1]  # the empty box goes too
    record = gallery_dict(image_file)
    del record["annotations"][2]["person_id"]
    with pytest.raises(ValueError, match=r"s1.jpg: 1 of 3 annotations have no 'person_id'.*-1 for a person"):
        mapper(record)
