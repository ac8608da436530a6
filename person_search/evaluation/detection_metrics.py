"""Pedestrian detection AP / recall of the person-search protocol (``DATASETS_AND_EVAL.md`` section 3.1), in numpy.

A detection matches a ground-truth box iff their IoU reaches ``iou_thresh`` AND the box is the detection's best
overlapping box AND the detection is the box's best overlapping detection (ties go to the first index). Every
detection contributes (score, matched?) to one global ranking; AP = sklearn AP of that ranking x recall, so
undetected people lower the AP. All images are handled at once through (ground truth, detection) pairs.
"""
import numpy as np

from .search_metrics import average_precision, paired_box_iou, ragged_arange, segment_first_argmax

__all__ = ["evaluate_detections"]


def _concatenate(per_image, width):
    """Concatenate per-image arrays; also return the CSR offsets."""
    arrays = [np.asarray(a, dtype=np.float64).reshape(-1, width) for a in per_image]
    offsets = np.r_[0, np.cumsum([a.shape[0] for a in arrays])].astype(np.int64)
    values = np.concatenate(arrays) if arrays else np.zeros((0, width))
    return values, offsets


def evaluate_detections(gt_boxes, det_boxes, det_scores, iou_thresh=0.5):
    """Detection AP and recall over a set of images.

    Args:
        gt_boxes: per image, (G_i, 4) ground-truth boxes x1y1x2y2 (the caller picks which boxes count, e.g. only
            labeled people, and which images take part).
        det_boxes: per image, (N_i, 4) detections x1y1x2y2, already filtered by score.
        det_scores: per image, (N_i,) detection scores.
        iou_thresh: minimum IoU of a match.

    Returns:
        dict with "AP" and "recall" (fractions in [0, 1]), "num_gt" and "num_matched".
    """
    if not len(gt_boxes) == len(det_boxes) == len(det_scores):
        raise ValueError(
            f"evaluate_detections: got {len(gt_boxes)} ground-truth, {len(det_boxes)} detection and "
            f"{len(det_scores)} score lists; expected one of each per image"
        )
    gts, gt_offsets = _concatenate(gt_boxes, 4)
    dets, det_offsets = _concatenate(det_boxes, 4)
    scores, score_offsets = _concatenate(det_scores, 1)
    if not np.array_equal(det_offsets, score_offsets):
        bad = int(np.flatnonzero(np.diff(det_offsets) != np.diff(score_offsets))[0])
        raise ValueError(f"evaluate_detections: image {bad} has a different number of detection boxes and scores")
    matched = _mutual_best_matches(gts, gt_offsets, dets, det_offsets, iou_thresh)

    num_gt = gts.shape[0]
    num_matched = int(np.count_nonzero(matched))
    recall = num_matched / num_gt if num_gt else 0.0
    ap = average_precision(matched, scores[:, 0]) * recall
    return {"AP": ap, "recall": recall, "num_gt": num_gt, "num_matched": num_matched}


def _mutual_best_matches(gts, gt_offsets, dets, det_offsets, iou_thresh):
    """(N,) bool: which detections match a ground-truth box under the mutual-best rule."""
    gt_image = np.repeat(np.arange(gt_offsets.size - 1), np.diff(gt_offsets))
    pair_det, pair_gt = ragged_arange(det_offsets[gt_image], np.diff(det_offsets)[gt_image])  # by gt, then det
    iou = paired_box_iou(gts[pair_gt], dets[pair_det])

    best_for_gt = np.zeros(iou.size, dtype=bool)
    best_for_gt[segment_first_argmax(iou, pair_gt)[1]] = True
    by_det = np.lexsort((pair_gt, pair_det))  # by det, then gt
    best_for_det = np.zeros(iou.size, dtype=bool)
    best_for_det[by_det[segment_first_argmax(iou[by_det], pair_det[by_det])[1]]] = True

    matched = np.zeros(dets.shape[0], dtype=bool)
    matched[pair_det[best_for_gt & best_for_det & (iou >= iou_thresh)]] = True
    return matched
