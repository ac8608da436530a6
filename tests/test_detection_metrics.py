"""Tests of the person-search detection metrics (mutual-best matching, AP x recall)."""
import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from person_search.evaluation.detection_metrics import evaluate_detections
from person_search.evaluation.search_metrics import box_iou

# Image A: gts [0,0,10,10] and [20,0,30,10]. Detections: exact (score .9, match); shifted by 1 px (.8, IoU .818
#   but the gt's best detection is the exact one -> false positive); far away (.7, false positive). Gt 2 missed.
# Image B: gt [0,0,10,10]; detection [0,0,10,20] (.95) with IoU 100/200 = 0.5 -> match (threshold inclusive).
# Image C: one gt, no detections -> missed.
# Image D: gts [0,0,10,10] and [5,0,15,10]; one detection [5,0,15,10] (.6): IoU 1/3 with the first, 1 with the
#   second. The first gt's best detection is it, but its best gt is the second -> it matches only the second.
GTS = [
    [[0, 0, 10, 10], [20, 0, 30, 10]],
    [[0, 0, 10, 10]],
    [[0, 0, 10, 10]],
    [[0, 0, 10, 10], [5, 0, 15, 10]],
]
DETS = [
    [[0, 0, 10, 10], [1, 0, 11, 10], [40, 40, 50, 50]],
    [[0, 0, 10, 20]],
    np.zeros((0, 4)),
    [[5, 0, 15, 10]],
]
SCORES = [[0.9, 0.8, 0.7], [0.95], [], [0.6]]


def test_hand_made_case():
    # ranking: .95 T, .9 T, .8 F, .7 F, .6 T -> precisions at hits 1, 1, 3/5 -> sklearn AP 13/15;
    # recall = 3 matches / 6 gts = 1/2 -> AP = 13/30
    result = evaluate_detections(GTS, DETS, SCORES)
    assert result["num_gt"] == 6 and result["num_matched"] == 3
    assert result["recall"] == pytest.approx(0.5)
    assert result["AP"] == pytest.approx(13 / 30)
    assert average_precision_score([1, 1, 0, 0, 1], [0.95, 0.9, 0.8, 0.7, 0.6]) == pytest.approx(13 / 15)


def test_labeled_only_subset():
    # keep only image A's first gt and image D's first gt as "labeled"; images B and C have none and are skipped.
    # Image A: exact detection matches (.9 T), .8 F, .7 F. Image D: only [0,0,10,10] remains, and the detection's
    # IoU with it is 1/3 < 0.5 -> F.
    # ranking .9 T, .8 F, .7 F, .6 F -> sklearn AP 1; recall 1/2 -> AP 1/2
    result = evaluate_detections([GTS[0][:1], GTS[3][:1]], [DETS[0], DETS[3]], [SCORES[0], SCORES[3]])
    assert result["num_gt"] == 2 and result["num_matched"] == 1
    assert result["AP"] == pytest.approx(0.5)


def test_equal_overlap_goes_to_first_box():
    # a detection exactly between two identical gts: IoU 1 with both -> matched to the first only.
    result = evaluate_detections([[[0, 0, 10, 10], [0, 0, 10, 10]]], [[[0, 0, 10, 10]]], [[0.7]])
    assert result["num_matched"] == 1 and result["recall"] == pytest.approx(0.5)


def test_no_detections_anywhere():
    result = evaluate_detections([[[0, 0, 10, 10]]], [np.zeros((0, 4))], [[]])
    assert result == {"AP": 0.0, "recall": 0.0, "num_gt": 1, "num_matched": 0}


def test_mismatched_lengths_are_errors():
    with pytest.raises(ValueError, match="one of each per image"):
        evaluate_detections(GTS, DETS[:2], SCORES)
    with pytest.raises(ValueError, match="image 0 has a different number"):
        evaluate_detections(GTS[:1], DETS[:1], [[0.9]])


@pytest.mark.parametrize("seed", range(5))
def test_matches_loop_reference(seed):
    """Random images against the per-image loop of the reference protocol."""
    rng = np.random.default_rng(seed)
    gts, dets, scores = [], [], []
    for _ in range(15):
        g = rng.integers(0, 4)
        d = rng.integers(0, 5)
        gxy = rng.integers(0, 30, size=(g, 2))
        dxy = rng.integers(0, 30, size=(d, 2))
        gts.append(np.c_[gxy, gxy + 10].astype(float))
        dets.append(np.c_[dxy, dxy + rng.integers(8, 13, size=(d, 2))].astype(float))
        scores.append(rng.integers(1, 5, size=d) / 4.0)
    labels, all_scores, count_tp, count_gt = [], [], 0, 0
    for g, d, s in zip(gts, dets, scores):
        count_gt += len(g)
        if len(d) == 0 or len(g) == 0:
            labels += [False] * len(d)
            all_scores += list(s)
            continue
        iou = box_iou(g, d)
        ok = iou >= 0.5
        ok &= np.arange(len(g))[:, None] == iou.argmax(axis=0)[None, :]
        ok &= np.arange(len(d))[None, :] == iou.argmax(axis=1)[:, None]
        labels += list(ok.any(axis=0))
        all_scores += list(s)
        count_tp += ok.sum()
    recall = count_tp / count_gt
    expected = average_precision_score(labels, all_scores) * recall if count_tp else 0.0
    result = evaluate_detections(gts, dets, scores)
    assert result["recall"] == pytest.approx(recall)
    assert result["AP"] == pytest.approx(expected, rel=1e-12, abs=1e-15)
