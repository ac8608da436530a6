"""Crop re-ID evaluation: the standard CMC / mAP / mINP protocol, its detectron2 evaluator and test loader.

Protocol (``DATASETS_AND_EVAL.md`` section 4.4, the Market-1501 evaluation every re-ID codebase uses): rank the
gallery of each query by distance (1 - cosine similarity; ties keep gallery order), remove gallery crops of the
query's identity seen by the query's camera, skip queries left without any match, then

* CMC: rank-k = fraction of valid queries whose first match is within the top k remaining crops;
* AP = (1 / #matches) * sum over the ranks r of the matches of (#matches within the top r) / r; mAP = mean;
* INP = #matches / rank of the last match; mINP = mean.

Distractors (pid 0) are ordinary negatives. The CUHK03 "single gallery shot" variant keeps AP / INP on the full
list but computes CMC over ``num_repeats`` random galleries of one crop per identity, averaged.
"""
import itertools
import json
import logging
import os
from collections import OrderedDict

import numpy as np
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import DatasetEvaluator, inference_on_dataset
from detectron2.utils import comm
from detectron2.utils.file_io import PathManager
from detectron2.utils.logger import create_small_table

from .inference import build_batched_test_loader
from .search_metrics import ragged_arange

__all__ = [
    "evaluate_reid",
    "evaluate_reid_distances",
    "ReIDEvaluator",
    "build_reid_test_loader",
    "inference_on_reid",
]

logger = logging.getLogger(__name__)

_REPORTED_RANKS = (1, 5, 10)
# Queries per chunk are chosen so that one chunk's (queries x gallery) arrays hold about this many entries.
_CHUNK_ENTRIES = 1 << 21


def _as_ids(values, name, length):
    array = np.asarray(values)
    if array.shape != (length,) or array.dtype.kind not in "iu":
        raise ValueError(f"{name}: expected {length} integers, got {array.dtype} array of shape {array.shape}")
    return array.astype(np.int64)


def _chunk_size(num_gallery):
    return max(1, min(1024, _CHUNK_ENTRIES // max(num_gallery, 1)))


class _Gallery:
    """Gallery ids, and the gallery grouped by identity (crops of one pid are contiguous in ``by_pid``)."""

    def __init__(self, pids, camids):
        self.pids, self.camids = pids, camids
        self.by_pid = np.argsort(pids, kind="stable")
        self.sorted_pids = pids[self.by_pid]
        new_group = np.r_[True, self.sorted_pids[1:] != self.sorted_pids[:-1]]
        self.group_starts = np.flatnonzero(new_group)
        self.group = np.empty_like(self.by_pid)
        self.group[self.by_pid] = np.cumsum(new_group) - 1


def _searchsorted_rows(sorted_rows, rows, values, side):
    """``np.searchsorted(sorted_rows[r], v, side)`` for every pair (r, v): a binary search over all pairs at once."""
    lo = np.zeros(rows.size, dtype=np.int64)
    hi = np.full(rows.size, sorted_rows.shape[1], dtype=np.int64)
    last = sorted_rows.shape[1] - 1
    while True:
        active = lo < hi
        if not active.any():
            return lo
        mid = (lo + hi) // 2
        probe = sorted_rows[rows, np.minimum(mid, last)]
        right = active & ((probe < values) if side == "left" else (probe <= values))
        lo = np.where(right, mid + 1, lo)
        hi = np.where(active & ~right, mid, hi)


def _stable_positions(dist, rows, cols, max_entries):
    """0-based position of gallery crop ``cols[i]`` in the ranking of query row ``rows[i]``.

    The ranking is ascending distance, equal distances in gallery order: position = #closer crops + #equally
    distant crops earlier in the gallery. Counted with binary searches in the sorted rows, not by ranking.
    """
    values = dist[rows, cols]
    sorted_rows = np.sort(dist, axis=1)
    closer = _searchsorted_rows(sorted_rows, rows, values, "left")
    tied = np.flatnonzero(_searchsorted_rows(sorted_rows, rows, values, "right") - closer > 1)
    gallery_index = np.arange(dist.shape[1])
    step = max(1, max_entries // dist.shape[1])
    for start in range(0, tied.size, step):  # only pairs sharing their distance with another crop
        t = tied[start:start + step]
        earlier_equal = (dist[rows[t]] == values[t, None]) & (gallery_index < cols[t, None])
        closer[t] += np.count_nonzero(earlier_equal, axis=1)
    return closer


def _rank_chunk(dist, q_pids, q_camids, gallery, sampling_keys):
    """Per-query results of one chunk of queries.

    Only the (query, same-identity crop) pairs are ranked: the matches and the removed crops are all among them,
    and a match's rank among the kept crops is its position minus the removed crops ranked before it.

    Args:
        dist: (c, G) distances. q_pids, q_camids: (c,). gallery: :class:`_Gallery`.
        sampling_keys: None, or (R, c, number of gallery identities + 1) uniform random numbers of the
            single-gallery-shot repeats.

    Returns:
        (first_hit, ap, inp, sampled_first_hit): first_hit (c,) 1-based rank of the first match among kept crops
        (0 if none), ap and inp (c,) float64, sampled_first_hit (R, c) rank of the match in each sampled gallery
        (0 if none), or None.
    """
    c, num_gallery = dist.shape
    lo = np.searchsorted(gallery.sorted_pids, q_pids, side="left")
    hi = np.searchsorted(gallery.sorted_pids, q_pids, side="right")
    members, rows = ragged_arange(lo, hi - lo)
    cols = gallery.by_pid[members]
    position = _stable_positions(dist, rows, cols, _CHUNK_ENTRIES)
    order = np.argsort(rows * num_gallery + position, kind="stable")  # by query, then rank
    rows, position = rows[order], position[order]
    removed = gallery.camids[cols[order]] == q_camids[rows]  # same identity and same camera
    removed_so_far = np.cumsum(removed)
    row_start = np.searchsorted(rows, np.arange(c))
    removed_before = removed_so_far - removed - np.r_[0, removed_so_far][row_start][rows]

    hit = ~removed
    rows, hit_ranks, hit_cols = rows[hit], (position - removed_before + 1)[hit].astype(np.float64), cols[order][hit]
    num_pos = np.bincount(rows, minlength=c)
    starts = np.cumsum(num_pos) - num_pos
    hits_so_far = np.arange(rows.size) - starts[rows] + 1
    ap = np.bincount(rows, weights=hits_so_far / hit_ranks, minlength=c) / np.maximum(num_pos, 1)
    valid = num_pos > 0
    first_hit = np.zeros(c, dtype=np.int64)
    inp = np.zeros(c, dtype=np.float64)
    first_hit[valid] = hit_ranks[starts[valid]]
    inp[valid] = num_pos[valid] / hit_ranks[starts[valid] + num_pos[valid] - 1]

    sampled_first_hit = None
    if sampling_keys is not None:
        sampled_first_hit = np.stack(
            [_sampled_first_hit(dist, keys, q_pids, gallery, rows, hit_cols) for keys in sampling_keys]
        )
    return first_hit, ap, inp, sampled_first_hit


def _sampled_first_hit(dist, uniforms, q_pids, gallery, hit_rows, hit_cols):
    """(c,) 1-based rank of the match in a gallery of one random kept crop per identity (0 if none).

    Every crop of another identity is kept, so that identity is represented by a uniformly drawn crop of its
    group; the query's own identity by a uniformly drawn kept match (``hit_rows`` / ``hit_cols``, row-major).

    Args:
        uniforms: (c, number of identities + 1) uniform numbers in [0, 1); the last column draws the match.
    """
    c = dist.shape[0]
    num_groups = gallery.group_starts.size
    sizes = np.diff(np.r_[gallery.group_starts, gallery.pids.size])
    picks = gallery.by_pid[gallery.group_starts + (uniforms[:, :num_groups] * sizes).astype(np.int64)]  # (c, ids)
    num_hits = np.bincount(hit_rows, minlength=c)
    has_match = num_hits > 0
    first = np.cumsum(num_hits) - num_hits
    match_col = np.zeros(c, dtype=np.int64)
    match_col[has_match] = hit_cols[first[has_match] + (uniforms[has_match, -1] * num_hits[has_match]).astype(np.int64)]
    match_value = dist[np.arange(c), match_col][:, None]
    pick_value = np.take_along_axis(dist, picks, axis=1)
    earlier = (pick_value < match_value) | ((pick_value == match_value) & (picks < match_col[:, None]))
    other_identity = gallery.pids[picks] != q_pids[:, None]
    return np.where(has_match, np.count_nonzero(earlier & other_identity, axis=1) + 1, 0)


def _evaluate(distance_chunks, q_pids, g_pids, q_camids, g_camids, max_rank, single_gallery_shot, num_repeats, seed):
    num_q, num_g = q_pids.size, g_pids.size
    if num_q == 0 or num_g == 0:
        raise ValueError(f"re-ID evaluation needs queries and gallery crops, got {num_q} and {num_g}")
    gallery = _Gallery(g_pids, g_camids)
    first_hit = np.zeros(num_q, dtype=np.int64)
    ap = np.zeros(num_q)
    inp = np.zeros(num_q)
    sampled = np.zeros((num_repeats, num_q), dtype=np.int64) if single_gallery_shot else None
    for start, dist in distance_chunks:
        stop = start + dist.shape[0]
        if not np.isfinite(dist).all():
            raise ValueError(f"distances of queries {start}..{stop - 1} contain NaN or infinite values")
        keys = None
        if single_gallery_shot:
            # One random stream per query: the sampled galleries do not depend on the chunking.
            shape = (num_repeats, gallery.group_starts.size + 1)
            keys = np.stack([np.random.default_rng([seed, q]).random(shape) for q in range(start, stop)], axis=1)
        f, a, i, s = _rank_chunk(dist, q_pids[start:stop], q_camids[start:stop], gallery, keys)
        first_hit[start:stop], ap[start:stop], inp[start:stop] = f, a, i
        if single_gallery_shot:
            sampled[:, start:stop] = s
    valid = first_hit > 0
    if not valid.any():
        raise ValueError(
            f"none of the {num_q} queries has a gallery match from another camera; check the query / gallery "
            "person_id and camera_id"
        )
    ranks = np.arange(1, max_rank + 1)
    if single_gallery_shot:
        # a valid query always has its identity in every sampled gallery: its sampled rank is >= 1
        cmc = (sampled[:, valid, None] <= ranks).mean(axis=(0, 1))
    else:
        cmc = (first_hit[valid, None] <= ranks).mean(axis=0)
    return {
        "cmc": cmc,
        "mAP": float(ap[valid].mean()),
        "mINP": float(inp[valid].mean()),
        "num_valid_queries": int(valid.sum()),
        "num_queries": int(num_q),
    }


def evaluate_reid_distances(distmat, q_pids, g_pids, q_camids, g_camids, *, max_rank=50,
                            single_gallery_shot=False, num_repeats=10, seed=0):
    """CMC, mAP and mINP of a (num_queries, num_gallery) distance matrix (smaller = closer).

    Gallery entries of the query's person seen by the query's camera are left out (the Market-1501 rule); every
    other entry counts, whatever its pid. Market-1501's junk crops (pid -1) must be dropped before, as the dataset
    loaders do: here they would count as wrong matches.

    Returns:
        dict with ``cmc`` (max_rank,) float array (``cmc[k - 1]`` = rank-k), ``mAP``, ``mINP`` (fractions in
        [0, 1], over the valid queries), ``num_valid_queries`` and ``num_queries``.
    Raises ValueError when no query has a match.
    """
    distmat = np.asarray(distmat)
    if distmat.ndim != 2:
        raise ValueError(f"distmat: expected (num_queries, num_gallery), got shape {distmat.shape}")
    num_q, num_g = distmat.shape
    ids = _ids(q_pids, g_pids, q_camids, g_camids, num_q, num_g)
    step = _chunk_size(num_g)
    chunks = ((s, distmat[s:s + step]) for s in range(0, num_q, step))
    return _evaluate(chunks, *ids, max_rank, single_gallery_shot, num_repeats, seed)


def evaluate_reid(query_features, gallery_features, q_pids, g_pids, q_camids, g_camids, *, max_rank=50,
                  single_gallery_shot=False, num_repeats=10, seed=0):
    """:func:`evaluate_reid_distances` with distance = 1 - cosine similarity of the (L2-normalised) features.

    The distance matrix is computed a chunk of queries at a time, never whole.
    """
    q = _normalised(query_features, "query_features")
    g = _normalised(gallery_features, "gallery_features")
    if q.shape[1] != g.shape[1]:
        raise ValueError(f"query features have dimension {q.shape[1]}, gallery features {g.shape[1]}")
    ids = _ids(q_pids, g_pids, q_camids, g_camids, q.shape[0], g.shape[0])
    step = _chunk_size(g.shape[0])
    chunks = ((s, 1.0 - q[s:s + step] @ g.T) for s in range(0, q.shape[0], step))
    return _evaluate(chunks, *ids, max_rank, single_gallery_shot, num_repeats, seed)


def _ids(q_pids, g_pids, q_camids, g_camids, num_q, num_g):
    return (
        _as_ids(q_pids, "q_pids", num_q),
        _as_ids(g_pids, "g_pids", num_g),
        _as_ids(q_camids, "q_camids", num_q),
        _as_ids(g_camids, "g_camids", num_g),
    )


def _normalised(features, name):
    features = np.asarray(features, dtype=np.float32)
    if features.ndim != 2:
        raise ValueError(f"{name}: expected (N, D), got shape {features.shape}")
    norms = np.linalg.norm(features, axis=1, keepdims=True)
    bad = np.flatnonzero(~np.isfinite(norms[:, 0]) | (norms[:, 0] == 0))
    if bad.size:
        raise ValueError(f"{name}: row {bad[0]} is zero, NaN or infinite ({bad.size} such rows)")
    return features / norms


class ReIDEvaluator(DatasetEvaluator):
    """Crop re-ID metrics of a query set against a gallery set.

    ``process`` takes records of either set as the re-ID loaders make them (``reid_split`` "query" or "gallery",
    ``image_id``), in any order and mixed, with ``outputs[i]["embedding"]`` a (D,) tensor. ``evaluate`` checks that
    every crop of both sets was processed exactly once and returns, in percent::

        {"reid": {"mAP", "rank1", "rank5", "rank10", "mINP"}}

    With ``output_dir`` it also writes them, with the datasets and query counts, to ``reid_results.json`` there.
    """

    def __init__(self, query_dataset_name, gallery_dataset_name, *, cuhk03_single_gallery_shot=False,
                 num_repeats=10, seed=0, max_rank=50, output_dir=None):
        """
        Args:
            query_dataset_name, gallery_dataset_name: registered re-ID datasets (person_id / camera_id per crop).
            cuhk03_single_gallery_shot: CMC of the classic CUHK03 protocol: ``num_repeats`` galleries of one
                random crop per identity (seeded by ``seed``), averaged; mAP / mINP stay on the full gallery.
            max_rank: length of the CMC curve (at least 10, the largest reported rank).
            output_dir: where to write ``reid_results.json`` (None: do not write).
        """
        if max_rank < max(_REPORTED_RANKS):
            raise ValueError(f"ReIDEvaluator: max_rank must be >= {max(_REPORTED_RANKS)}, got {max_rank}")
        self._names = {"query": query_dataset_name, "gallery": gallery_dataset_name}
        self._single_gallery_shot = cuhk03_single_gallery_shot
        self._num_repeats = num_repeats
        self._seed = seed
        self._max_rank = max_rank
        self._output_dir = output_dir
        self.reset()

    def reset(self):
        self._records = []

    def process(self, inputs, outputs):
        for record, output in zip(inputs, outputs):
            split = record.get("reid_split")
            if split not in self._names:
                raise ValueError(
                    f"ReIDEvaluator: record '{record.get('image_id')}' has reid_split {split!r}, expected 'query' "
                    "or 'gallery' (use the records of the re-ID dataset loaders)"
                )
            if "embedding" not in output:
                raise KeyError(
                    f"ReIDEvaluator: the output for '{record.get('image_id')}' has no 'embedding' (keys: "
                    f"{sorted(output)}); run the model in eval mode (ReIDCropNet returns {{'embedding': (D,)}})"
                )
            embedding = output["embedding"].detach().to("cpu", torch.float32).numpy()
            self._records.append((split, record["image_id"], embedding))

    def evaluate(self):
        records = self._records
        if comm.get_world_size() > 1:
            comm.synchronize()
            records = list(itertools.chain(*comm.gather(records, dst=0)))
            if not comm.is_main_process():
                return {}
        arrays = {split: self._collect(split, records) for split in self._names}
        metrics = evaluate_reid(
            arrays["query"][0], arrays["gallery"][0], arrays["query"][1], arrays["gallery"][1],
            arrays["query"][2], arrays["gallery"][2], max_rank=self._max_rank,
            single_gallery_shot=self._single_gallery_shot, num_repeats=self._num_repeats, seed=self._seed,
        )
        skipped = metrics["num_queries"] - metrics["num_valid_queries"]
        if skipped:
            logger.warning(
                f"{skipped} of {metrics['num_queries']} queries of '{self._names['query']}' have no match in "
                f"'{self._names['gallery']}' from another camera; they are not counted"
            )
        summary = {"mAP": 100.0 * metrics["mAP"]}
        summary.update({f"rank{k}": 100.0 * float(metrics["cmc"][k - 1]) for k in _REPORTED_RANKS})
        summary["mINP"] = 100.0 * metrics["mINP"]
        variant = " (CUHK03 single-gallery-shot CMC)" if self._single_gallery_shot else ""
        logger.info(
            f"Re-ID results of '{self._names['query']}' against '{self._names['gallery']}'{variant}:\n"
            + create_small_table(summary)
        )
        results = OrderedDict(reid=summary)
        if self._output_dir:
            PathManager.mkdirs(self._output_dir)
            record = {
                "gallery_dataset": self._names["gallery"],
                "query_dataset": self._names["query"],
                "cuhk03_single_gallery_shot": self._single_gallery_shot,
                "num_queries": metrics["num_queries"],
                "num_valid_queries": metrics["num_valid_queries"],
                "results": results,
            }
            with PathManager.open(os.path.join(self._output_dir, "reid_results.json"), "w") as f:
                json.dump(record, f, indent=2)
        return results

    def _collect(self, split, records):
        """(features, pids, camids) of ``split`` in dataset order, every crop processed exactly once."""
        name = self._names[split]
        dicts = DatasetCatalog.get(name)
        index = {d["image_id"]: i for i, d in enumerate(dicts)}
        if len(index) != len(dicts):
            raise ValueError(f"re-ID dataset '{name}' has repeated image_id values")
        features = [None] * len(dicts)
        for record_split, image_id, embedding in records:
            if record_split != split:
                continue
            i = index.get(image_id)
            if i is None:
                raise ValueError(f"{split} crop '{image_id}' was processed but is not in '{name}'")
            if features[i] is not None:
                raise ValueError(f"{split} crop '{image_id}' of '{name}' was processed twice")
            if embedding.ndim != 1:
                raise ValueError(f"{split} crop '{image_id}': embedding of shape {embedding.shape}, expected (D,)")
            features[i] = embedding
        missing = [d["image_id"] for d, f in zip(dicts, features) if f is None]
        if missing:
            raise ValueError(f"{len(missing)} crops of '{name}' were never processed, e.g. '{missing[0]}'")
        dims = {f.shape[0] for f in features}
        if len(dims) != 1:
            raise ValueError(f"crops of '{name}' have embeddings of different dimensions {sorted(dims)}")
        pids = np.array([d["person_id"] for d in dicts], dtype=np.int64)
        camids = np.array([d["camera_id"] for d in dicts], dtype=np.int64)
        return np.stack(features), pids, camids


def build_reid_test_loader(cfg, gallery_dataset_name):
    """One test loader over the query crops, then the gallery crops, of a re-ID gallery dataset.

    The query set is the gallery metadata's ``query_dataset``. Batches of ``cfg.TEST.REID.IMS_PER_BATCH`` crops
    per device, mapped by ``ReIDCropMapper(cfg, is_train=False)``; under distributed inference every crop is
    seen by exactly one rank (detectron2's InferenceSampler).
    """
    from person_search.data.reid_mapper import ReIDCropMapper  # the data package imports this package's siblings

    query_dataset_name = getattr(MetadataCatalog.get(gallery_dataset_name), "query_dataset", None)
    if query_dataset_name is None:
        raise ValueError(
            f"build_reid_test_loader: metadata of '{gallery_dataset_name}' names no query_dataset; "
            "register it with person_search.data.register_reid_splits"
        )
    dicts = DatasetCatalog.get(query_dataset_name) + DatasetCatalog.get(gallery_dataset_name)
    mapper = ReIDCropMapper(cfg, is_train=False)
    return build_batched_test_loader(
        dicts, mapper, cfg.TEST.REID.IMS_PER_BATCH, cfg.DATALOADER.NUM_WORKERS, batch_size_key="TEST.REID.IMS_PER_BATCH"
    )


def inference_on_reid(model, loader, evaluator):
    """Embed every crop of ``loader`` with ``model`` in eval mode and return ``evaluator.evaluate()``.

    detectron2's ``inference_on_dataset`` does the loop (eval mode, no gradients, timing); ranks other than the
    main one get ``{}``.
    """
    results = inference_on_dataset(model, loader, evaluator)
    return {} if results is None else results
