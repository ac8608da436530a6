"""Tests of the pure-numpy person-search protocol math (person_search.evaluation.search_metrics)."""
import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from person_search.evaluation.search_metrics import (
    ExcludedGalleries,
    GalleryDetections,
    ListedGalleries,
    SearchPositives,
    average_precision,
    box_iou,
    evaluate_search,
    segment_first_argmax,
    size_dependent_iou_threshold,
)


def _unit(angle_deg):
    """2-D unit embedding at an angle; similarity to [1, 0] is cos(angle)."""
    a = np.deg2rad(angle_deg)
    return [np.cos(a), np.sin(a)]


def _detections(per_image):
    """GalleryDetections from a list (one per image) of lists of (box, embedding)."""
    boxes, embs, offsets = [], [], [0]
    for dets in per_image:
        for box, emb in dets:
            boxes.append(box)
            embs.append(emb)
        offsets.append(len(boxes))
    return GalleryDetections(
        boxes=np.asarray(boxes, dtype=np.float64).reshape(-1, 4),
        embeddings=np.asarray(embs, dtype=np.float32).reshape(len(boxes), -1),
        offsets=np.asarray(offsets, dtype=np.int64),
    )


def _positives(items):
    """SearchPositives from (query, image, gt box) triples."""
    query, image, boxes = zip(*items) if items else ((), (), ())
    return SearchPositives(np.asarray(query, np.int64), np.asarray(image, np.int64), np.asarray(boxes, float))


def _listed(lists):
    offsets = np.r_[0, np.cumsum([len(x) for x in lists])].astype(np.int64)
    return ListedGalleries(offsets, np.asarray([i for x in lists for i in x], dtype=np.int64))


# ----------------------------------------------------------------------------------------------- basic helpers


def test_box_iou_hand_values():
    a = [[0, 0, 10, 10]]
    b = [[5, 0, 15, 10], [20, 20, 30, 30], [0, 0, 10, 10], [3, 3, 3, 3]]
    # overlap 5x10 = 50, union 150 -> 1/3; disjoint -> 0; identical -> 1; zero-area box inside -> 0
    np.testing.assert_allclose(box_iou(a, b), [[1 / 3, 0.0, 1.0, 0.0]])


def test_size_dependent_threshold():
    # 10x10 person: 100 / (20 * 20) = 0.25; 100x200 person: 20000 / (110 * 210) > 0.5 -> capped at 0.5
    np.testing.assert_allclose(size_dependent_iou_threshold([[0, 0, 10, 10], [5, 5, 105, 205]]), [0.25, 0.5])


def test_segment_first_argmax_breaks_ties_to_first():
    values = np.array([1.0, 3.0, 3.0, 2.0, 5.0, 5.0])
    segments = np.array([0, 0, 0, 4, 7, 7])
    ids, first = segment_first_argmax(values, segments)
    np.testing.assert_array_equal(ids, [0, 4, 7])
    np.testing.assert_array_equal(first, [1, 3, 4])


@pytest.mark.parametrize("seed", range(30))
def test_average_precision_equals_sklearn_with_ties(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 60))
    labels = rng.random(n) < 0.3
    labels[rng.integers(n)] = True
    scores = rng.integers(0, 6, size=n) / 5.0  # few distinct values: many ties
    expected = average_precision_score(labels, scores)
    assert average_precision(labels, scores) == pytest.approx(expected, rel=1e-12, abs=1e-15)


def test_average_precision_without_positives_is_zero():
    assert average_precision([False, False], [0.3, 0.1]) == 0.0


# ------------------------------------------------------------------------------------------ hand-made protocol

PERSON = [0, 0, 40, 100]  # a 40x100 person: threshold 0.5


def test_only_first_overlapping_detection_by_similarity_counts():
    # image 0 holds the target; two detections cover it exactly, sims 0.6 and 0.8: only the 0.8 one is positive.
    # image 1: negatives with sims 0.9 and 0.7. Ranked: 0.9(-) 0.8(+) 0.7(-) 0.6(-)
    # -> AP = precision at the hit = 1/2, recall 1/1; first hit at rank 1 (top1 miss, top5 hit).
    dets = _detections(
        [
            [(PERSON, [0.6, 0.8]), (PERSON, [0.8, 0.6])],
            [([100, 0, 140, 100], [0.9, 0.1]), ([200, 0, 240, 100], [0.7, 0.2])],
        ]
    )
    result = evaluate_search([[1.0, 0.0]], dets, _positives([(0, 0, PERSON)]), _listed([[0, 1]]))
    assert result.average_precision[0] == pytest.approx(0.5)
    assert result.first_hit_rank[0] == 1
    assert not result.top_k(1)[0] and result.top_k(5)[0]
    assert result.num_matched[0] == 1 and result.num_positives[0] == 1


def test_ties_in_similarity_follow_stable_gallery_order():
    # target detection (image 0) and a negative (image 1) both have similarity 0.8.
    # AP groups the tie: precision at the end of the group = 1/2 -> AP 0.5 in both gallery orders.
    # top-1 follows a stable sort in gallery order: hit when image 0 comes first, miss otherwise.
    dets = _detections([[(PERSON, [0.8, 0.6])], [([100, 0, 140, 100], [0.8, -0.6])]])
    positives = _positives([(0, 0, PERSON)])
    result = evaluate_search([[1.0, 0.0]], dets, positives, _listed([[0, 1]]))
    assert result.average_precision[0] == pytest.approx(0.5)
    assert result.first_hit_rank[0] == 0

    swapped = _detections([[([100, 0, 140, 100], [0.8, -0.6])], [(PERSON, [0.8, 0.6])]])
    result = evaluate_search([[1.0, 0.0]], swapped, _positives([(0, 1, PERSON)]), _listed([[0, 1]]))
    assert result.average_precision[0] == pytest.approx(0.5)
    assert result.first_hit_rank[0] == 1


def test_equal_similarity_overlapping_detections_pick_first_in_gallery_order():
    # two detections on the target with the same similarity: the first one (lower index) is the match,
    # the second stays a negative ranked right after it -> AP 1, rank 0.
    dets = _detections([[(PERSON, [1.0, 0.0]), ([1, 1, 41, 101], [1.0, 0.0])]])
    result = evaluate_search([[1.0, 0.0]], dets, _positives([(0, 0, PERSON)]), _listed([[0]]))
    # the tie group {match, negative} ends at position 2 -> precision 1/2 (sklearn groups ties)
    assert result.average_precision[0] == pytest.approx(0.5)
    assert result.first_hit_rank[0] == 0


def test_undetected_targets_penalise_recall_and_images_without_detections():
    # query 0: positives in images 0 (detected, sim 1.0, ranked first) and 1 (no detections at all); image 2's
    #   detection (sim 0.5) is a negative ranked second. count_gt = 2, count_tp = 1 -> AP = sklearn AP (1.0) x recall (1/2) = 0.5; top-1 hit.
    # query 1: its only positive (image 2) has a detection that misses the person (IoU 0) -> AP 0, no hit.
    dets = _detections(
        [
            [(PERSON, _unit(0))],
            [],
            [([300, 300, 340, 400], _unit(60))],
        ]
    )
    positives = _positives([(0, 0, PERSON), (0, 1, PERSON), (1, 2, PERSON)])
    result = evaluate_search([_unit(0), _unit(0)], dets, positives, _listed([[0, 1, 2], [2, 0, 1]]))
    np.testing.assert_allclose(result.average_precision, [0.5, 0.0])
    np.testing.assert_array_equal(result.num_positives, [2, 1])
    np.testing.assert_array_equal(result.num_matched, [1, 0])
    np.testing.assert_array_equal(result.first_hit_rank, [0, -1])
    assert not result.top_k(10)[1]


def test_small_person_uses_lenient_threshold():
    # 10x10 target: threshold 0.25. Detection [0,0,10,30] has IoU 100/300 = 1/3 >= 0.25 -> match (AP 1).
    # Same geometry at 40x100 (threshold 0.5): detection [0,0,40,300] has IoU 4000/12000 = 1/3 -> no match, AP 0.
    small = _detections([[([0, 0, 10, 30], _unit(0))]])
    result = evaluate_search([_unit(0)], small, _positives([(0, 0, [0, 0, 10, 10])]), _listed([[0]]))
    assert result.average_precision[0] == pytest.approx(1.0)
    large = _detections([[([0, 0, 40, 300], _unit(0))]])
    result = evaluate_search([_unit(0)], large, _positives([(0, 0, PERSON)]), _listed([[0]]))
    assert result.average_precision[0] == 0.0


def test_full_set_excludes_query_image():
    # images: 0 = query image (a very similar detection that must be ignored), 1 = positive (sim cos 30),
    # 2 = negative (sim cos 60), 3 = negative with no detections.
    # Gallery = {1, 2, 3}: ranked +(.87) -(.5) -> AP 1, top-1 hit. Counting image 0 would push the hit to rank 1.
    dets = _detections(
        [
            [([500, 0, 540, 100], _unit(0))],
            [(PERSON, _unit(30))],
            [(PERSON, _unit(60))],
            [],
        ]
    )
    galleries = ExcludedGalleries(query_image=np.array([0]))
    result = evaluate_search([_unit(0)], dets, _positives([(0, 1, PERSON)]), galleries)
    assert result.average_precision[0] == pytest.approx(1.0)
    assert result.first_hit_rank[0] == 0


def test_cross_camera_drops_same_camera_images():
    # cameras: image 0 (query image) cam 1, image 1 cam 1 (negative, sim 1.0), image 2 cam 2 (positive, cos 30),
    # image 3 cam 3 (negative, cos 10).
    # Same-camera kept: ranked -(1.0) -(.98) +(.87) -> AP 1/3, rank 2.
    # Cross-camera: image 1 dropped -> -(.98) +(.87) -> AP 1/2, rank 1.
    dets = _detections(
        [
            [(PERSON, _unit(0))],
            [(PERSON, _unit(0))],
            [(PERSON, _unit(30))],
            [(PERSON, _unit(10))],
        ]
    )
    positives = _positives([(0, 2, PERSON)])
    cams = np.array([1, 1, 2, 3])
    same = evaluate_search([_unit(0)], dets, positives, ExcludedGalleries(np.array([0])))
    assert same.average_precision[0] == pytest.approx(1 / 3)
    assert same.first_hit_rank[0] == 2
    cross = evaluate_search([_unit(0)], dets, positives, ExcludedGalleries(np.array([0]), np.array([1]), cams))
    assert cross.average_precision[0] == pytest.approx(1 / 2)
    assert cross.first_hit_rank[0] == 1


def test_positive_outside_gallery_is_an_error():
    dets = _detections([[(PERSON, _unit(0))], [(PERSON, _unit(0))]])
    with pytest.raises(ValueError, match="positive image 1 of query 0"):
        evaluate_search([_unit(0)], dets, _positives([(0, 1, PERSON)]), _listed([[0]]))


# ------------------------------------------------------------------------------- against a per-query reference


def _reference(query_embeddings, dets, positives, galleries_per_query):
    """Straightforward per-query, per-image implementation of the protocol (section 3 of DATASETS_AND_EVAL)."""
    aps, ranks = [], []
    for q, gallery in enumerate(galleries_per_query):
        labels, sims, count_gt = [], [], 0
        gt_of = {int(i): b for qq, i, b in zip(positives.query, positives.image, positives.gt_boxes) if qq == q}
        for image in sorted(gallery):  # ties are ranked in gallery (image index) order, not protocol list order
            lo, hi = dets.offsets[image], dets.offsets[image + 1]
            count_gt += image in gt_of
            if hi == lo:
                continue
            sim = dets.embeddings[lo:hi] @ query_embeddings[q]
            label = np.zeros(hi - lo, dtype=bool)
            if image in gt_of:
                gt = gt_of[image]
                thr = size_dependent_iou_threshold([gt])[0]
                iou = box_iou([gt], dets.boxes[lo:hi])[0]
                for j in np.argsort(-sim, kind="stable"):
                    if iou[j] >= thr:
                        label[j] = True
                        break
            labels.append(label)
            sims.append(sim)
        labels = np.concatenate(labels) if labels else np.zeros(0, bool)
        sims = np.concatenate(sims) if sims else np.zeros(0)
        tp = labels.sum()
        aps.append(0.0 if tp == 0 else average_precision_score(labels, sims) * tp / count_gt)
        order = np.argsort(-sims, kind="stable")
        hits = np.flatnonzero(labels[order])
        ranks.append(hits[0] if hits.size else -1)
    return np.array(aps), np.array(ranks)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("mode", ["listed", "excluded"])
def test_matches_per_query_reference(seed, mode):
    rng = np.random.default_rng(seed)
    num_images, num_queries, dim = 12, 9, 3
    per_image = []
    for _ in range(num_images):
        n = int(rng.integers(0, 5))
        xy = rng.integers(0, 40, size=(n, 2)).astype(float)
        wh = rng.integers(4, 30, size=(n, 2)).astype(float)
        # quantised embeddings produce exact similarity ties
        emb = rng.integers(-2, 3, size=(n, dim)).astype(np.float32)
        per_image.append([(list(np.r_[p, p + s]), e) for p, s, e in zip(xy, wh, emb)])
    dets = _detections(per_image)
    queries = rng.integers(-2, 3, size=(num_queries, dim)).astype(np.float32)
    query_image = rng.integers(0, num_images, size=num_queries)
    cams = rng.integers(1, 4, size=num_images)
    if mode == "listed":
        lists = [list(rng.permutation([i for i in range(num_images) if i != query_image[q]])[:7])
                 for q in range(num_queries)]
        galleries = _listed(lists)
    else:
        galleries = ExcludedGalleries(query_image, cams[query_image], cams)
        lists = [[i for i in range(num_images) if i != query_image[q] and cams[i] != cams[query_image[q]]]
                 for q in range(num_queries)]
    items = []
    for q, gallery in enumerate(lists):
        for image in gallery[: int(rng.integers(0, 4))]:
            lo, hi = dets.offsets[image], dets.offsets[image + 1]
            # a gt near one of the image's detections (or anywhere when the image has none)
            base = dets.boxes[rng.integers(lo, hi)] if hi > lo else np.array([0.0, 0.0, 20.0, 30.0])
            items.append((q, image, base + np.tile(rng.integers(-3, 4, size=2), 2)))  # shifted box
    positives = _positives(items)
    expected_ap, expected_rank = _reference(queries, dets, positives, lists)
    # a tiny memory bound forces one query per chunk and one row per ranking block
    for max_bytes in (1, 256 << 20):
        result = evaluate_search(queries, dets, positives, galleries, max_chunk_bytes=max_bytes)
        np.testing.assert_allclose(result.average_precision, expected_ap, rtol=1e-12, atol=1e-15)
        np.testing.assert_array_equal(result.first_hit_rank, expected_rank)
