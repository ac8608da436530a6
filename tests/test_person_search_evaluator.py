"""Tests of PersonSearchEvaluator and inference_on_person_search on small registered fake datasets.

Embeddings are 2-D unit vectors at an angle; the similarity of two of them is the cosine of the angle between.
"""
import json
import uuid

import numpy as np
import pytest
import torch
from torch import nn

import person_search  # noqa: F401  (adapts detectron2 before its modules are imported)
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import Boxes, BoxMode, Instances

from person_search.evaluation import (
    PersonSearchEvaluator,
    build_person_search_test_loaders,
    inference_on_person_search,
)

P = [0.0, 0.0, 40.0, 100.0]  # a 40x100 person box (match threshold 0.5)
R = [100.0, 0.0, 140.0, 100.0]


def _unit(deg):
    return [float(np.cos(np.deg2rad(deg))), float(np.sin(np.deg2rad(deg)))]


def _gallery_dict(image_id, boxes_pids, **extra):
    annotations = [
        {"bbox": list(b), "bbox_mode": BoxMode.XYXY_ABS, "category_id": 0, "person_id": pid} for b, pid in boxes_pids
    ]
    return {"file_name": f"/nonexistent/{image_id}", "image_id": image_id, "height": 200, "width": 400,
            "annotations": annotations, **extra}


def _query_dict(query_id, image_id, box, pid, **extra):
    return {"file_name": f"/nonexistent/{image_id}", "image_id": image_id, "height": 200, "width": 400,
            "query_box": list(box), "person_id": pid, "query_id": query_id, **extra}


def _instances(dets):
    """Instances from (box, score, embedding angle or explicit embedding) triples."""
    inst = Instances((200, 400))
    inst.pred_boxes = Boxes(torch.tensor([d[0] for d in dets], dtype=torch.float32).reshape(-1, 4))
    inst.scores = torch.tensor([d[1] for d in dets], dtype=torch.float32)
    inst.pred_classes = torch.zeros(len(dets), dtype=torch.int64)
    embs = [_unit(d[2]) if np.isscalar(d[2]) else d[2] for d in dets]
    inst.pred_embeddings = torch.tensor(embs, dtype=torch.float32).reshape(len(dets), -1)
    return inst


def _register(name, gallery_dicts, query_dicts, **meta):
    DatasetCatalog.register(name + "_gallery", lambda: gallery_dicts)
    DatasetCatalog.register(name + "_query", lambda: query_dicts)
    common = {"evaluator_type": "person_search", "dataset_root": "/nonexistent", "thing_classes": ["person"]}
    MetadataCatalog.get(name + "_query").set(protocol=meta["protocol"], **common)
    MetadataCatalog.get(name + "_gallery").set(query_dataset=name + "_query", **common, **meta)
    return name + "_gallery"


def _unregister(name):
    for split in ("_gallery", "_query"):
        DatasetCatalog.remove(name + split)
        MetadataCatalog.remove(name + split)


# ------------------------------------------------------------------------------------------- CUHK-SYSU style
# Images: g0 (query 0's person at P, an unlabeled person at R), g1 (query 0's person at P, query 1's at R = the
# query 1 image), g2 (query 1's person at [50,0,90,100]), g3 (query 0's image: its person at P),
# g4 (one unlabeled person at P). Query 0 embeds at 0 degrees, query 1 at 90 degrees.
CUHK_GALLERY = [
    _gallery_dict("g0", [(P, 0), (R, -1)]),
    _gallery_dict("g1", [(P, 0), (R, 1)]),
    _gallery_dict("g2", [([50.0, 0.0, 90.0, 100.0], 1)]),
    _gallery_dict("g3", [(P, 0)]),
    _gallery_dict("g4", [(P, -1)]),
]
CUHK_QUERIES = [
    _query_dict(0, "g3", P, 0, occlusion=True, resolution=False),
    _query_dict(1, "g1", R, 1, occlusion=False, resolution=False),
]
# Detections (box, score, angle). g0: on query 0's person (.985 to query 0) and on R (.996 to query 0, negative),
# plus one below det_thresh. g1: on query 0's person (.940), on R (angle 80). g2: misses query 1's person
# (IoU 0) and a far-away box very similar to query 0 (.9994). g3: the query image. g4: an unlabeled person.
CUHK_DETS = {
    "g0": [(P, 0.9, 10), (R, 0.8, 5), ([300.0, 100.0, 340.0, 200.0], 0.3, 0)],
    "g1": [(P, 0.95, 20), (R, 0.7, 80)],
    "g2": [([200.0, 0.0, 240.0, 100.0], 0.6, 85), ([300.0, 0.0, 340.0, 100.0], 0.9, 2)],
    "g3": [(P, 0.99, 0)],
    "g4": [(P, 0.5, 45)],
}
CUHK_QUERY_EMB = {0: 0, 1: 90}


def _cuhk_protocol(gallery_size):
    if gallery_size == 2:
        return [
            {"gallery": ["g0", "g1"], "positive_boxes": np.array([P, P], dtype=np.float32)},
            {"gallery": ["g2", "g0"], "positive_boxes": np.array([[50, 0, 90, 100]], dtype=np.float32)},
        ]
    assert gallery_size == -1
    return [
        {"gallery": ["g0", "g1", "g2", "g4"], "positive_boxes": np.array([P, P], dtype=np.float32)},
        {"gallery": ["g2", "g0", "g3", "g4"], "positive_boxes": np.array([[50, 0, 90, 100]], dtype=np.float32)},
    ]


@pytest.fixture
def cuhk():
    name = f"test_cuhk_{uuid.uuid4().hex}"
    gallery = _register(name, CUHK_GALLERY, CUHK_QUERIES, protocol="cuhk_sysu", gallery_sizes=(2,),
                        search_protocol=_cuhk_protocol)
    yield gallery
    _unregister(name)


def _feed(evaluator, gallery_dicts, dets, query_dicts, query_emb):
    evaluator.reset()
    for d in gallery_dicts:
        evaluator.process([d], [{"instances": _instances(dets[d["image_id"]])}])
    for q in query_dicts:
        evaluator.process([q], [{"instances": _instances([(q["query_box"], 1.0, query_emb[q["query_id"]])])}])
    return evaluator


def test_cuhk_sysu_gallery_size(cuhk, tmp_path):
    evaluator = PersonSearchEvaluator(cuhk, gallery_size=2, output_dir=str(tmp_path))
    results = _feed(evaluator, CUHK_GALLERY, CUHK_DETS, CUHK_QUERIES, CUHK_QUERY_EMB).evaluate()
    # Search, query 0 (gallery g0, g1): .996(-) .985(+) .940(+) .174(-) -> precisions 1/2, 2/3 -> AP 7/12,
    #   first hit at rank 1. Query 1 (gallery g2, g0): its person is never detected -> AP 0.
    #   mAP = 7/24; top-1 0; top-5 1/2. Occlusion subset = query 0 alone; no query flags resolution.
    assert results["search"]["mAP"] == pytest.approx(100 * 7 / 24)
    assert results["search"]["top1"] == 0.0
    assert results["search"]["top5"] == pytest.approx(50.0)
    assert results["search"]["top10"] == pytest.approx(50.0)
    assert results["search_occlusion"] == pytest.approx({"mAP": 100 * 7 / 12, "top1": 0.0, "top5": 100.0,
                                                         "top10": 100.0})
    assert "search_resolution" not in results
    # Detection (score >= 0.5), all 7 people: ranked .99 T, .95 T, .9 {T, F} (tie), .8 T, .7 T, .6 F, .5 T.
    #   sklearn AP = (1 + 1 + 3/4 + 4/5 + 5/6 + 6/8) / 6; recall 6/7 -> AP = 5.1333.../7.
    # Labeled people only (5; g4 skipped with its detection): .99 T, .95 T, .9 {T, F}, .8 F (R in g0 is
    #   unlabeled now), .7 T, .6 F -> sklearn AP (1 + 1 + 3/4 + 4/6) / 4, recall 4/5.
    det = results["detection"]
    assert det["AP"] == pytest.approx(100 * (1 + 1 + 0.75 + 0.8 + 5 / 6 + 0.75) / 7)
    assert det["recall"] == pytest.approx(100 * 6 / 7)
    assert det["AP_labeled"] == pytest.approx(100 * (1 + 1 + 0.75 + 4 / 6) / 4 * 4 / 5)
    assert det["recall_labeled"] == pytest.approx(80.0)
    saved = json.loads((tmp_path / "person_search_results.json").read_text())
    assert saved["results"]["search"]["mAP"] == pytest.approx(100 * 7 / 24)
    assert saved["gallery_size"] == 2


def test_cuhk_sysu_full_set(cuhk):
    evaluator = PersonSearchEvaluator(cuhk, gallery_size=-1)
    results = _feed(evaluator, CUHK_GALLERY, CUHK_DETS, CUHK_QUERIES, CUHK_QUERY_EMB).evaluate()
    # Query 0 (gallery g0, g1, g2, g4; its own image g3 with a 1.0 similarity is not searched):
    #   .9994(-) .996(-) .985(+) .940(+) .707(-) ... -> precisions 1/3, 2/4 -> AP 5/12, first hit at rank 2.
    # Query 1: never detected -> 0. mAP = 5/24.
    assert results["search"]["mAP"] == pytest.approx(100 * 5 / 24)
    assert results["search"]["top1"] == 0.0 and results["search"]["top5"] == pytest.approx(50.0)


def test_invalid_settings(cuhk):
    with pytest.raises(ValueError, match="gallery_size 100 is not one of"):
        PersonSearchEvaluator(cuhk, gallery_size=100)
    with pytest.raises(ValueError, match="CUHK-SYSU has none"):
        PersonSearchEvaluator(cuhk, gallery_size=2, cross_camera=True)


# ------------------------------------------------------------------------------------------------ PRW style
# Frames f0 (cam 1, query 0's frame: person 5 at P), f1 (cam 1: person 5), f2 (cam 2: person 5 at P, person 7 at R),
# f3 (cam 3, query 1's frame: person 7). Query 0 embeds at 0 degrees, query 1 at 90 degrees.
PRW_GALLERY = [
    _gallery_dict("f0", [(P, 5), (R, -1)], camera_id=1),
    _gallery_dict("f1", [(P, 5)], camera_id=1),
    _gallery_dict("f2", [(P, 5), (R, 7)], camera_id=2),
    _gallery_dict("f3", [(P, 7)], camera_id=3),
]
PRW_QUERIES = [_query_dict(0, "f0", P, 5, camera_id=1), _query_dict(1, "f3", P, 7, camera_id=3)]
PRW_DETS = {
    "f0": [(P, 0.9, 0)],
    "f1": [(P, 0.9, 30)],
    "f2": [(P, 0.9, 20), (R, 0.9, 90)],
    "f3": [(P, 0.9, 10)],
}
PRW_QUERY_EMB = {0: 0, 1: 90}


@pytest.fixture
def prw():
    name = f"test_prw_{uuid.uuid4().hex}"
    gallery = _register(name, PRW_GALLERY, PRW_QUERIES, protocol="prw")
    yield gallery
    _unregister(name)


def test_prw_all_cameras_and_cross_camera(prw):
    # Query 1: its person's only other frame is f2, detected with similarity 1 -> AP 1, top-1, in both modes.
    # Query 0, all cameras (f1, f2, f3): .985(-, f3) .940(+, f2) .866(+, f1) 0(-) -> AP (1/2 + 2/3)/2 = 7/12.
    # Query 0, cross-camera (f1 is camera 1 like the query: neither searched nor counted): .985(-) .940(+) 0(-)
    #   -> AP 1/2.
    evaluator = PersonSearchEvaluator(prw)
    results = _feed(evaluator, PRW_GALLERY, PRW_DETS, PRW_QUERIES, PRW_QUERY_EMB).evaluate()
    assert results["search"] == pytest.approx({"mAP": 100 * (7 / 12 + 1) / 2, "top1": 50.0, "top5": 100.0,
                                               "top10": 100.0})
    evaluator = PersonSearchEvaluator(prw, cross_camera=True)
    results = _feed(evaluator, PRW_GALLERY, PRW_DETS, PRW_QUERIES, PRW_QUERY_EMB).evaluate()
    assert results["search"]["mAP"] == pytest.approx(100 * (0.5 + 1) / 2)
    assert results["search"]["top1"] == pytest.approx(50.0)
    assert "search_occlusion" not in results


def test_prw_results_file_has_no_gallery_size(prw, tmp_path):
    # gallery_size is a CUHK-SYSU setting (test_cuhk_sysu_gallery_size checks it is recorded there)
    evaluator = PersonSearchEvaluator(prw, gallery_size=50, cross_camera=True, output_dir=str(tmp_path))
    _feed(evaluator, PRW_GALLERY, PRW_DETS, PRW_QUERIES, PRW_QUERY_EMB).evaluate()
    saved = json.loads((tmp_path / "person_search_results.json").read_text())
    assert saved["protocol"] == "prw" and saved["gallery_size"] is None and saved["cross_camera"] is True
    assert saved["results"]["search"]["mAP"] == pytest.approx(100 * (0.5 + 1) / 2)


def test_prw_camera_ids_are_needed_only_across_cameras():
    name = f"test_prw_{uuid.uuid4().hex}"
    gallery = [{k: v for k, v in d.items() if k != "camera_id"} for d in PRW_GALLERY]
    registered = _register(name, gallery, PRW_QUERIES, protocol="prw")
    try:
        results = _feed(PersonSearchEvaluator(registered), gallery, PRW_DETS, PRW_QUERIES, PRW_QUERY_EMB).evaluate()
        assert results["search"]["mAP"] == pytest.approx(100 * (7 / 12 + 1) / 2)
        evaluator = PersonSearchEvaluator(registered, cross_camera=True)
        with pytest.raises(ValueError, match="record 'f0' has no camera_id, which cross_camera needs"):
            _feed(evaluator, gallery, PRW_DETS, PRW_QUERIES, PRW_QUERY_EMB).evaluate()
    finally:
        _unregister(name)


def test_prw_gt_boxes_count_is_checked(prw):
    evaluator = PersonSearchEvaluator(prw, use_gt_boxes=True)
    with pytest.raises(ValueError, match="image 'f2': use_gt_boxes expects one box per annotation"):
        dets = dict(PRW_DETS, f0=[(P, 1.0, 0), (R, 1.0, 0)], f2=[(P, 1.0, 20)])
        _feed(evaluator, PRW_GALLERY, dets, PRW_QUERIES, PRW_QUERY_EMB).evaluate()


# -------------------------------------------------------------------------------------------------- bad input


def _evaluate_with(cuhk, gallery=CUHK_GALLERY, dets=CUHK_DETS, queries=CUHK_QUERIES, query_emb=CUHK_QUERY_EMB):
    return _feed(PersonSearchEvaluator(cuhk, gallery_size=2), gallery, dets, queries, query_emb).evaluate()


def test_gallery_image_never_processed(cuhk):
    with pytest.raises(ValueError, match="1 images of gallery .* never processed, e.g. image 'g4'"):
        _evaluate_with(cuhk, gallery=CUHK_GALLERY[:4])


def test_wrong_embedding_dimension(cuhk):
    dets = dict(CUHK_DETS, g1=[(P, 0.95, [1.0, 0.0, 0.0])])
    with pytest.raises(ValueError, match="gallery image 'g1': embedding dimension 3, expected 2"):
        _evaluate_with(cuhk, dets=dets)


def test_nan_features(cuhk):
    dets = dict(CUHK_DETS, g2=[(P, 0.9, [float("nan"), 0.0])])
    with pytest.raises(ValueError, match="gallery image 'g2': embeddings contain NaN"):
        _evaluate_with(cuhk, dets=dets)
    with pytest.raises(ValueError, match="query_id 1: embedding has NaN"):
        _evaluate_with(cuhk, query_emb={0: 0, 1: [float("nan"), 1.0]})
    # A NaN score fails every comparison with det_thresh: it must be reported, not dropped as a low score.
    dets = dict(CUHK_DETS, g2=[(P, float("nan"), 0)])
    with pytest.raises(ValueError, match="gallery image 'g2': scores contain NaN"):
        _evaluate_with(cuhk, dets=dets)


def test_empty_gallery_is_an_error():
    name = f"test_empty_{uuid.uuid4().hex}"
    gallery = _register(name, [], CUHK_QUERIES, protocol="prw")
    try:
        evaluator = _feed(PersonSearchEvaluator(gallery), [], {}, CUHK_QUERIES, CUHK_QUERY_EMB)
        with pytest.raises(ValueError, match=f"gallery '{gallery}' has no images"):
            evaluator.evaluate()
    finally:
        _unregister(name)


def test_query_without_embedding(cuhk):
    evaluator = _feed(PersonSearchEvaluator(cuhk, gallery_size=2), CUHK_GALLERY, CUHK_DETS, CUHK_QUERIES[:1],
                      CUHK_QUERY_EMB)
    empty = Instances((200, 400))
    empty.pred_boxes = Boxes(torch.zeros(0, 4))
    evaluator.process([CUHK_QUERIES[1]], [{"instances": empty}])
    with pytest.raises(ValueError, match="query_id 1 \\(image 'g1'\\): no pred_embeddings, expected exactly one"):
        evaluator.evaluate()


def test_unknown_query_id(cuhk):
    queries = CUHK_QUERIES + [_query_dict(7, "g0", P, 0)]
    with pytest.raises(ValueError, match="query_id 7 .* is not a query of"):
        _evaluate_with(cuhk, queries=queries, query_emb={**CUHK_QUERY_EMB, 7: 0})


# ------------------------------------------------------------------------------------------------- inference


class _FakeSearchModel(nn.Module):
    """Returns the fixed detections of each gallery image and, for given boxes, the table's query embedding."""

    def __init__(self, dets, query_emb):
        super().__init__()
        self.dets, self.query_emb = dets, query_emb
        self.weight = nn.Parameter(torch.zeros(1))
        self.modes = []

    @property
    def device(self):
        return self.weight.device

    def forward(self, inputs):
        self.modes.append(self.training)
        return [{"instances": _instances(self.dets[x["image_id"]])} for x in inputs]

    def inference(self, inputs, detected_instances=None, do_postprocess=True):
        assert do_postprocess
        self.modes.append(self.training)
        outputs = []
        for x, given in zip(inputs, detected_instances):
            angle = self.query_emb[x["query_id"]] if "query_box" in x else 45
            boxes = given.pred_boxes.tensor.tolist()
            outputs.append({"instances": _instances([(b, 0.2, angle) for b in boxes])})
        return outputs


def _given(boxes):
    inst = Instances((200, 400))
    inst.pred_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
    inst.scores = torch.ones(len(boxes))
    inst.pred_classes = torch.zeros(len(boxes), dtype=torch.int64)
    return inst


def test_inference_on_person_search_matches_direct_evaluation(cuhk):
    model = _FakeSearchModel(CUHK_DETS, CUHK_QUERY_EMB).train()
    gallery_loader = [[CUHK_GALLERY[0], CUHK_GALLERY[1]], [CUHK_GALLERY[2], CUHK_GALLERY[3], CUHK_GALLERY[4]]]
    query_loader = [[dict(q, given_instances=_given([q["query_box"]])) for q in CUHK_QUERIES]]
    results = inference_on_person_search(
        model, gallery_loader, query_loader, PersonSearchEvaluator(cuhk, gallery_size=2)
    )
    assert results["search"]["mAP"] == pytest.approx(100 * 7 / 24)
    assert model.modes == [False, False, False] and model.training  # eval mode inside, restored after


def test_inference_with_gt_boxes(prw):
    # every gallery box is a ground-truth box embedded at 45 degrees, scored 1 by the inference loop (the fake
    # model says 0.2, below det_thresh). Detection is then perfect; query 0 (0 deg) and query 1 (90 deg) see all
    # gallery boxes at the same similarity: AP = precision of the whole tied list.
    model = _FakeSearchModel(PRW_DETS, PRW_QUERY_EMB)
    gallery_loader = [
        [dict(d, given_instances=_given([a["bbox"] for a in d["annotations"]])) for d in PRW_GALLERY]
    ]
    query_loader = [[dict(q, given_instances=_given([q["query_box"]])) for q in PRW_QUERIES]]
    results = inference_on_person_search(
        model, gallery_loader, query_loader, PersonSearchEvaluator(prw, use_gt_boxes=True)
    )
    assert results["detection"]["AP"] == pytest.approx(100.0)
    assert results["detection"]["recall_labeled"] == pytest.approx(100.0)
    # query 0: gallery f1, f2, f3 (4 boxes, 2 positives) -> 2/4; query 1: f0, f1, f2 (5 boxes, 1 positive) -> 1/5
    assert results["search"]["mAP"] == pytest.approx(100 * (0.5 + 0.2) / 2)


@pytest.mark.parametrize("batch_size", [1, 3])
def test_build_test_loaders(prw, monkeypatch, batch_size):
    import person_search.data

    class FakeMapper:
        def __init__(self, cfg, is_train, gallery_gt_boxes=False):
            assert not is_train
            self.gallery_gt_boxes = gallery_gt_boxes

        def __call__(self, d):
            return dict(d, gt_flag=self.gallery_gt_boxes)

    monkeypatch.setattr(person_search.data, "PersonSearchDatasetMapper", FakeMapper)
    cfg = get_cfg()
    person_search.add_person_search_config(cfg)
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.TEST.PERSON_SEARCH.IMS_PER_BATCH = batch_size
    gallery_loader, query_loader = build_person_search_test_loaders(cfg, prw, use_gt_boxes=True)
    expected_sizes = [1, 1, 1, 1] if batch_size == 1 else [3, 1]
    assert [len(batch) for batch in gallery_loader] == expected_sizes
    gallery = [x for batch in gallery_loader for x in batch]
    queries = [x for batch in query_loader for x in batch]
    assert [x["image_id"] for x in gallery] == ["f0", "f1", "f2", "f3"] and all(x["gt_flag"] for x in gallery)
    assert [x["query_id"] for x in queries] == [0, 1] and not any(x["gt_flag"] for x in queries)


def test_full_set_protocol_must_list_every_other_image():
    name = f"test_cuhk_{uuid.uuid4().hex}"

    def short_protocol(gallery_size):
        entries = _cuhk_protocol(-1)
        return [entries[0], dict(entries[1], gallery=entries[1]["gallery"][:3])]  # g4 missing for query 1

    gallery = _register(name, CUHK_GALLERY, CUHK_QUERIES, protocol="cuhk_sysu", gallery_sizes=(2,),
                        search_protocol=short_protocol)
    try:
        with pytest.raises(ValueError, match="query_id 1: gallery of 3 images, expected every image"):
            _feed(PersonSearchEvaluator(gallery, gallery_size=-1), CUHK_GALLERY, CUHK_DETS, CUHK_QUERIES,
                  CUHK_QUERY_EMB).evaluate()
    finally:
        _unregister(name)
