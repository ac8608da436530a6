"""Person-search protocol math in pure numpy: IoU, sklearn-equivalent average precision, and the search metrics.

The search protocol (see ``DATASETS_AND_EVAL.md`` section 3) is evaluated for all queries at once:

* similarities of a chunk of queries against the gallery detections are one matrix product;
* for every protocol positive (query, gallery image, ground-truth box) the matched detection is the first one, by
  descending similarity, whose IoU with the ground truth reaches the size-dependent threshold; it is found with a
  segment argmax over (positive, detection) pairs, not a loop over images;
* the average precision of a query only depends on the ranked list down to its lowest-ranked matched detection,
  so only the "candidates" (detections at least as similar as that one) are ranked, with one sort per chunk.

Ordering convention: ranking is a *stable* sort on descending similarity in gallery order (gallery images in the
order of the gallery dataset, detections in model output order). It decides top-k and which of several equally
similar overlapping detections is the match; average precision groups equal similarities into one threshold, like
``sklearn.metrics.average_precision_score``, so it does not depend on the order.
"""
from dataclasses import dataclass

import numpy as np

__all__ = [
    "box_iou",
    "paired_box_iou",
    "size_dependent_iou_threshold",
    "average_precision",
    "ragged_arange",
    "segment_first_argmax",
    "GalleryDetections",
    "SearchPositives",
    "ListedGalleries",
    "ExcludedGalleries",
    "SearchResult",
    "evaluate_search",
]


def box_iou(boxes1, boxes2):
    """IoU matrix (N, M) of x1y1x2y2 boxes, continuous coordinates (no +1); 0 where the union is empty."""
    boxes1 = np.asarray(boxes1, dtype=np.float64).reshape(-1, 4)
    boxes2 = np.asarray(boxes2, dtype=np.float64).reshape(-1, 4)
    return paired_box_iou(boxes1[:, None, :], boxes2[None, :, :])


def paired_box_iou(boxes1, boxes2):
    """Element-wise IoU of two broadcastable arrays of x1y1x2y2 boxes (last axis 4)."""
    boxes1 = np.asarray(boxes1, dtype=np.float64)
    boxes2 = np.asarray(boxes2, dtype=np.float64)
    inter_w = np.clip(np.minimum(boxes1[..., 2], boxes2[..., 2]) - np.maximum(boxes1[..., 0], boxes2[..., 0]), 0, None)
    inter_h = np.clip(np.minimum(boxes1[..., 3], boxes2[..., 3]) - np.maximum(boxes1[..., 1], boxes2[..., 1]), 0, None)
    inter = inter_w * inter_h
    area1 = (boxes1[..., 2] - boxes1[..., 0]) * (boxes1[..., 3] - boxes1[..., 1])
    area2 = (boxes2[..., 2] - boxes2[..., 0]) * (boxes2[..., 3] - boxes2[..., 1])
    union = area1 + area2 - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, inter / union, 0.0)


def size_dependent_iou_threshold(gt_boxes):
    """Per-box match threshold ``min(0.5, w*h / ((w+10)*(h+10)))``: small people are matched more leniently."""
    gt_boxes = np.asarray(gt_boxes, dtype=np.float64).reshape(-1, 4)
    w = gt_boxes[:, 2] - gt_boxes[:, 0]
    h = gt_boxes[:, 3] - gt_boxes[:, 1]
    return np.minimum(0.5, w * h / ((w + 10.0) * (h + 10.0)))


def average_precision(labels, scores):
    """Average precision, equal to ``sklearn.metrics.average_precision_score(labels, scores)``.

    Equal scores form one threshold, so every positive contributes the precision at the end of its tie group:
    AP = mean over positives of (#positives scoring >= s) / (#items scoring >= s). Returns 0.0 without positives
    (where sklearn warns and returns 0).
    """
    labels = np.asarray(labels, dtype=bool).ravel()
    scores = np.asarray(scores, dtype=np.float64).ravel()
    if labels.shape != scores.shape:
        raise ValueError(f"average_precision: {labels.size} labels but {scores.size} scores")
    num_pos = np.count_nonzero(labels)
    if num_pos == 0:
        return 0.0
    order = np.argsort(-scores, kind="stable")
    sorted_scores, sorted_labels = scores[order], labels[order]
    group_end = _tie_group_ends(np.diff(sorted_scores) != 0)
    true_pos = np.cumsum(sorted_labels)
    precision_at_end = true_pos[group_end] / (group_end + 1)
    return float(precision_at_end[sorted_labels].sum() / num_pos)


def _tie_group_ends(boundary_after):
    """Index of the last element of each element's run, given ``boundary_after[i]`` = a run ends after item i.

    ``boundary_after`` has one entry fewer than the items (the last item always ends a run).
    """
    n = boundary_after.size + 1
    is_end = np.append(boundary_after, True)
    ends = np.where(is_end, np.arange(n), n)
    return np.minimum.accumulate(ends[::-1])[::-1]


def ragged_arange(starts, lengths):
    """Concatenation of ``arange(s, s + n)`` for every (s, n); also returns the owner index of each element."""
    starts = np.asarray(starts, dtype=np.int64)
    lengths = np.asarray(lengths, dtype=np.int64)
    owner = np.repeat(np.arange(lengths.size), lengths)
    first_of_owner = np.cumsum(lengths) - lengths
    values = starts[owner] + np.arange(owner.size) - first_of_owner[owner]
    return values, owner


def segment_first_argmax(values, segment_ids):
    """For values grouped in contiguous segments (``segment_ids`` sorted ascending), find each segment's maximum.

    Returns ``(segments, index)``: the distinct segment ids and, for each, the index of the FIRST element holding
    the segment's maximum (ties go to the earliest element, like ``np.argmax``).
    """
    values = np.asarray(values)
    segment_ids = np.asarray(segment_ids)
    if values.size == 0:
        return segment_ids[:0], np.zeros(0, dtype=np.int64)
    starts = np.flatnonzero(np.r_[True, segment_ids[1:] != segment_ids[:-1]])
    lengths = np.diff(np.r_[starts, values.size])
    seg_max = np.maximum.reduceat(values, starts)
    at_max = np.flatnonzero(values == np.repeat(seg_max, lengths))
    owner = np.searchsorted(starts, at_max, side="right") - 1
    first = at_max[np.r_[True, owner[1:] != owner[:-1]]]
    return segment_ids[starts], first


@dataclass(frozen=True)
class GalleryDetections:
    """All kept gallery detections, grouped per gallery image (CSR layout).

    Attributes:
        boxes: (N, 4) x1y1x2y2 in original image coordinates.
        embeddings: (N, D) float32, L2-normalised.
        offsets: (num_images + 1,) int64; image i owns detections ``offsets[i]:offsets[i+1]``.
    """

    boxes: np.ndarray
    embeddings: np.ndarray
    offsets: np.ndarray

    @property
    def num_images(self):
        return self.offsets.size - 1

    @property
    def image_of_detection(self):
        return np.repeat(np.arange(self.num_images), np.diff(self.offsets))


@dataclass(frozen=True)
class SearchPositives:
    """Protocol positives: query ``query[p]`` has its person in gallery image ``image[p]`` at ``gt_boxes[p]``.

    Every positive counts towards the query's recall denominator whether or not it is detected. A (query, image)
    pair must appear at most once.
    """

    query: np.ndarray
    image: np.ndarray
    gt_boxes: np.ndarray


@dataclass(frozen=True)
class ListedGalleries:
    """Each query searches an explicit list of gallery images: ``images[offsets[q]:offsets[q+1]]`` (CUHK-SYSU)."""

    offsets: np.ndarray
    images: np.ndarray

    def mask(self, start, stop, num_images):
        """Boolean (stop - start, num_images): which images belong to the galleries of queries start..stop-1."""
        lo, hi = self.offsets[start], self.offsets[stop]
        rows = np.repeat(np.arange(stop - start), np.diff(self.offsets[start : stop + 1]))
        mask = np.zeros((stop - start, num_images), dtype=bool)
        mask[rows, self.images[lo:hi]] = True
        return mask


@dataclass(frozen=True)
class ExcludedGalleries:
    """Each query searches every gallery image except its own (PRW, CUHK-SYSU full set).

    With cameras given (PRW cross-camera), images from the query's camera are excluded too.
    ``query_image[q]`` = -1 when the query image is not a gallery image.
    """

    query_image: np.ndarray
    query_camera: np.ndarray = None
    image_camera: np.ndarray = None

    def mask(self, start, stop, num_images):
        """Boolean (stop - start, num_images): which images belong to the galleries of queries start..stop-1."""
        mask = np.ones((stop - start, num_images), dtype=bool)
        own = self.query_image[start:stop]
        has_own = own >= 0
        mask[np.flatnonzero(has_own), own[has_own]] = False
        if self.query_camera is not None:
            mask &= self.image_camera[None, :] != self.query_camera[start:stop, None]
        return mask


@dataclass(frozen=True)
class SearchResult:
    """Per-query search outcome.

    Attributes:
        average_precision: (Q,) protocol AP = sklearn AP of the query's ranked detections x recall; 0 without a hit.
        first_hit_rank: (Q,) 0-based rank of the best matched detection in the ranked list; -1 if none.
        num_matched: (Q,) positives whose person was detected (count_tp).
        num_positives: (Q,) protocol positives (count_gt).
    """

    average_precision: np.ndarray
    first_hit_rank: np.ndarray
    num_matched: np.ndarray
    num_positives: np.ndarray

    def top_k(self, k):
        """(Q,) bool: a matched detection is among the k most similar detections."""
        return (self.first_hit_rank >= 0) & (self.first_hit_rank < k)


# Working memory per (query, detection) element of a chunk: similarity (4), gallery mask (1), candidate mask (1).
_BYTES_PER_ELEMENT = 6
# Working memory per ranked candidate: row, column, similarity, sort key, order, flags.
_BYTES_PER_CANDIDATE = 48


def evaluate_search(query_embeddings, detections, positives, galleries, max_chunk_bytes=256 << 20):
    """Evaluate the person-search protocol for all queries.

    Args:
        query_embeddings: (Q, D) float, one L2-normalised embedding per query (of its ground-truth query box).
        detections (GalleryDetections): the gallery detections kept for search (score >= threshold).
        positives (SearchPositives): protocol positives; their images must be in the querying gallery.
        galleries (ListedGalleries or ExcludedGalleries): which gallery images each query searches.
        max_chunk_bytes: bound on the working memory of one chunk of queries.

    Returns:
        SearchResult
    """
    query_embeddings = np.ascontiguousarray(query_embeddings, dtype=np.float32)
    gallery_embeddings = np.ascontiguousarray(detections.embeddings, dtype=np.float32)
    num_queries = query_embeddings.shape[0]
    num_dets = gallery_embeddings.shape[0]
    det_image = detections.image_of_detection

    pos_query = np.asarray(positives.query, dtype=np.int64)
    pos_image = np.asarray(positives.image, dtype=np.int64)
    pair_pos, pair_det = _overlapping_pairs(detections, positives)
    pair_query = pos_query[pair_pos]
    order = np.argsort(pair_query, kind="stable")  # pairs of one query become contiguous, still by positive
    pair_pos, pair_det, pair_query = pair_pos[order], pair_det[order], pair_query[order]
    pos_by_query = np.argsort(pos_query, kind="stable")

    ap = np.zeros(num_queries)
    first_hit_rank = np.full(num_queries, -1, dtype=np.int64)
    num_matched = np.zeros(num_queries, dtype=np.int64)
    num_positives = np.bincount(pos_query, minlength=num_queries).astype(np.int64)

    det_counts = np.diff(detections.offsets)
    chunk = _chunk_size(num_queries, num_dets, max_chunk_bytes)
    col_of_det = np.full(num_dets, -1, dtype=np.int64)
    for start in range(0, num_queries, chunk):
        stop = min(start + chunk, num_queries)
        image_mask = galleries.mask(start, stop, detections.num_images)
        _check_positives_in_gallery(image_mask, start, pos_query, pos_image, pos_by_query)

        # columns: the detections of the images some query of the chunk searches, in gallery order
        used = image_mask.any(axis=0)
        cols = np.flatnonzero(used[det_image])
        col_of_det[cols] = np.arange(cols.size)
        chunk_gallery = gallery_embeddings if cols.size == num_dets else gallery_embeddings[cols]
        sims = query_embeddings[start:stop] @ chunk_gallery.T
        sims += 0.0  # turns -0.0 into +0.0 so that the sort key below orders exactly like float comparison
        valid = np.repeat(image_mask[:, used], det_counts[used], axis=1)

        lo, hi = np.searchsorted(pair_query, [start, stop])
        rows, matched_cols = _matched_detections(
            sims, pair_query[lo:hi] - start, col_of_det[pair_det[lo:hi]], pair_pos[lo:hi]
        )
        col_of_det[cols] = -1
        chunk_ap, chunk_rank = _rank_matched(sims, valid, rows, matched_cols, max_chunk_bytes)
        counts = num_positives[start:stop]
        ap[start:stop] = np.divide(chunk_ap, counts, out=np.zeros(stop - start), where=counts > 0)
        first_hit_rank[start:stop] = chunk_rank
        num_matched[start:stop] = np.bincount(rows, minlength=stop - start)
    return SearchResult(ap, first_hit_rank, num_matched, num_positives)


def _chunk_size(num_queries, num_dets, max_chunk_bytes):
    """Queries per chunk, bounded by memory. Chunks are as large as memory allows because the matrix product of
    a few queries is far less efficient per query than that of hundreds."""
    chunk = max_chunk_bytes // max(_BYTES_PER_ELEMENT * num_dets, 1)
    return int(np.clip(chunk, 1, max(num_queries, 1)))


def _overlapping_pairs(detections, positives):
    """(positive, detection) pairs within the positive's image whose IoU reaches the positive's threshold."""
    pos_image = np.asarray(positives.image, dtype=np.int64)
    gt_boxes = np.asarray(positives.gt_boxes, dtype=np.float64).reshape(-1, 4)
    starts = detections.offsets[pos_image]
    lengths = detections.offsets[pos_image + 1] - starts
    pair_det, pair_pos = ragged_arange(starts, lengths)
    iou = paired_box_iou(gt_boxes[pair_pos], np.asarray(detections.boxes, dtype=np.float64)[pair_det])
    keep = iou >= size_dependent_iou_threshold(gt_boxes)[pair_pos]
    return pair_pos[keep], pair_det[keep]


def _check_positives_in_gallery(image_mask, start, pos_query, pos_image, pos_by_query):
    lo, hi = np.searchsorted(pos_query[pos_by_query], [start, start + image_mask.shape[0]])
    idx = pos_by_query[lo:hi]
    outside = ~image_mask[pos_query[idx] - start, pos_image[idx]]
    if outside.any():
        bad = idx[np.flatnonzero(outside)[0]]
        raise ValueError(
            f"evaluate_search: positive image {pos_image[bad]} of query {pos_query[bad]} is not in that query's "
            "gallery; the protocol must list every positive image in the gallery"
        )


def _matched_detections(sims, pair_row, pair_col, pair_pos):
    """Per positive with overlapping detections, the first one by (stable) descending similarity.

    Returns (row, column) of each matched detection in the chunk's similarity matrix.
    """
    pair_sims = sims[pair_row, pair_col]
    _, first = segment_first_argmax(pair_sims, pair_pos)
    return pair_row[first], pair_col[first]


def _descending_key(rows, values):
    """uint64 sort key: ascending row, then descending float32 value, ordered exactly like float comparison.

    A float32's bits, with the sign bit flipped for positives and all bits flipped for negatives, order like the
    floats themselves (this needs -0.0 turned into +0.0 first); inverting gives descending order.
    """
    bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)
    ascending = np.where(bits >> 31 == 1, ~bits, bits | np.uint32(1 << 31))
    return (rows.astype(np.uint64) << np.uint64(32)) | (~ascending).astype(np.uint64)


def _rank_matched(sims, valid, rows, cols, max_chunk_bytes):
    """AP numerator (sum of precisions at the matched detections) and rank of the best match, per chunk row.

    Only detections at least as similar as the row's least similar match can change either number, so only those
    candidates are sorted; rows are processed in blocks that keep the candidates within the memory bound.
    """
    num_rows, num_cols = sims.shape
    ap_sum = np.zeros(num_rows)
    first_rank = np.full(num_rows, -1, dtype=np.int64)
    if rows.size == 0:
        return ap_sum, first_rank
    lowest = np.full(num_rows, np.inf, dtype=np.float32)
    np.minimum.at(lowest, rows, sims[rows, cols])
    candidate = valid & (sims >= lowest[:, None])
    matches = np.sort(rows * num_cols + cols)  # flat indices, like the candidates'

    per_row = np.count_nonzero(candidate, axis=1)
    limit = max(max_chunk_bytes // _BYTES_PER_CANDIDATE, int(per_row.max()))
    cumulative = np.cumsum(per_row)
    start = 0
    while start < num_rows:
        base = cumulative[start - 1] if start else 0
        stop = max(int(np.searchsorted(cumulative, base + limit, side="right")), start + 1)
        flat = np.flatnonzero(candidate[start:stop]) + start * num_cols  # ascending row, then column
        lo, hi = np.searchsorted(matches, [start * num_cols, stop * num_cols])
        is_match = np.zeros(flat.size, dtype=bool)
        is_match[np.searchsorted(flat, matches[lo:hi])] = True
        row_in_block = flat // num_cols - start
        ap_sum[start:stop], first_rank[start:stop] = _rank_block(
            row_in_block, sims.reshape(-1)[flat], is_match, stop - start
        )
        start = stop
    return ap_sum, first_rank


def _rank_block(rows, values, is_match, num_rows):
    """Rank candidates within each row (stable, descending similarity) and score the matches among them.

    ``rows``, ``values``, ``is_match``: the candidates, ordered by row then gallery order.
    """
    order = np.argsort(_descending_key(rows, values), kind="stable")
    rows, values, match = rows[order], values[order], is_match[order]

    row_start = np.searchsorted(rows, np.arange(num_rows))
    position = np.arange(rows.size) - row_start[rows]
    group_end = _tie_group_ends((rows[1:] != rows[:-1]) | (values[1:] != values[:-1]))
    matches_so_far = np.cumsum(match)
    matches_before_row = np.r_[0, matches_so_far][row_start]
    precision = (matches_so_far[group_end] - matches_before_row[rows]) / (position[group_end] + 1)

    ap_sum = np.bincount(rows[match], weights=precision[match], minlength=num_rows)
    first_rank = np.full(num_rows, -1, dtype=np.int64)
    match_idx = np.flatnonzero(match)
    is_first = np.r_[True, rows[match_idx][1:] != rows[match_idx][:-1]]
    first_rank[rows[match_idx[is_first]]] = position[match_idx[is_first]]
    return ap_sum, first_rank
