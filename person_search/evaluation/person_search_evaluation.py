"""``PersonSearchEvaluator``: detection and person-search metrics of CUHK-SYSU / PRW style datasets.

The protocol (``DATASETS_AND_EVAL.md`` section 3) comes from the gallery dataset's metadata: ``protocol``
("cuhk_sysu" or "prw"), ``query_dataset`` and, for CUHK-SYSU, ``search_protocol(gallery_size)``. The numbers are
computed by :mod:`.search_metrics` and :mod:`.detection_metrics`.
"""
import copy
import itertools
import json
import logging
import os
from collections import OrderedDict

import numpy as np
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import DatasetEvaluator
from detectron2.utils import comm
from detectron2.utils.file_io import PathManager
from detectron2.utils.logger import create_small_table

from .detection_metrics import evaluate_detections
from .search_metrics import (
    ExcludedGalleries,
    GalleryDetections,
    ListedGalleries,
    SearchPositives,
    evaluate_search,
    ragged_arange,
)

__all__ = ["PersonSearchEvaluator", "check_score_threshold"]

logger = logging.getLogger(__name__)

_PROTOCOLS = ("cuhk_sysu", "prw")
# CUHK-SYSU query subsets flagged in the query dicts, and the result key of each.
_QUERY_SUBSETS = (("occlusion", "search_occlusion"), ("resolution", "search_resolution"))
_TOP_K = (1, 5, 10)


def check_score_threshold(cfg, threshold, name):
    """Refuse a detection-score ``threshold`` (``name`` names the setting) below the model's
    ``MODEL.ROI_HEADS.SCORE_THRESH_TEST``: the model never outputs those detections, so the lower threshold would
    silently act as the model's.

    An equal threshold is accepted, but detectron2 keeps scores strictly above its threshold while the protocols
    keep scores >= theirs, so a score exactly at it is lost: the paper configs use 0.49 under the protocols' 0.5.
    """
    model_thresh = cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST
    if threshold < model_thresh:
        raise ValueError(
            f"{name} = {threshold} is below MODEL.ROI_HEADS.SCORE_THRESH_TEST = {model_thresh}: the model drops "
            f"detections scoring under {model_thresh}; lower MODEL.ROI_HEADS.SCORE_THRESH_TEST below {threshold} too"
        )


class PersonSearchEvaluator(DatasetEvaluator):
    """Detection AP / recall on the gallery images and person-search mAP / top-k of the queries.

    ``process`` accepts gallery records (dataset dicts of the gallery set, outputs with ``pred_boxes``, ``scores``
    and ``pred_embeddings``) and query records (dicts with ``query_box`` and ``query_id``, outputs holding the
    query box with its embedding), in any order and mixed. ``evaluate`` returns, in percent::

        {"detection": {"AP", "recall", "AP_labeled", "recall_labeled"},
         "search": {"mAP", "top1", "top5", "top10"},
         "search_occlusion": {...}, "search_resolution": {...}}   # CUHK-SYSU, when the queries flag subsets

    The subset results average the subset's queries over the same TestG<gallery_size> galleries; the galleries
    stored in Occlusion.mat / Resolution.mat (100 images each) are not read (they are expected to equal TestG100's,
    which was not verified against the real files).
    """

    def __init__(
        self,
        gallery_dataset_name,
        *,
        gallery_size=100,
        cross_camera=False,
        det_thresh=0.5,
        output_dir=None,
        use_gt_boxes=False,
    ):
        """
        Args:
            gallery_dataset_name: a registered gallery dataset whose metadata holds the protocol.
            gallery_size: CUHK-SYSU gallery size, one of the metadata's ``gallery_sizes`` or -1 (whole test set).
            cross_camera: PRW only: also drop gallery frames from the query's camera.
            det_thresh: detections scoring below it are ignored by both protocols.
            output_dir: where to write ``person_search_results.json`` (None: do not write); its ``gallery_size``
                is null for PRW.
            use_gt_boxes: the gallery outputs are the ground-truth boxes (one per annotation, in order), giving
                the re-identification upper bound; inference then embeds the ground-truth boxes.
        """
        meta = MetadataCatalog.get(gallery_dataset_name)
        for key in ("protocol", "query_dataset"):
            if not hasattr(meta, key):
                raise ValueError(
                    f"PersonSearchEvaluator: metadata of '{gallery_dataset_name}' has no '{key}'; "
                    "register it as a person-search gallery dataset"
                )
        if meta.protocol not in _PROTOCOLS:
            raise ValueError(
                f"PersonSearchEvaluator: metadata of '{gallery_dataset_name}' has protocol '{meta.protocol}', "
                f"expected one of {_PROTOCOLS}"
            )
        if meta.protocol == "cuhk_sysu":
            allowed = tuple(meta.gallery_sizes) + (-1,)
            if gallery_size not in allowed:
                raise ValueError(f"PersonSearchEvaluator: gallery_size {gallery_size} is not one of {allowed}")
            if cross_camera:
                raise ValueError(
                    f"PersonSearchEvaluator: '{gallery_dataset_name}' is a CUHK-SYSU gallery: cross_camera "
                    "(TEST.PERSON_SEARCH.CROSS_CAMERA, a PRW setting) needs camera ids; CUHK-SYSU has none"
                )
        self._gallery_name = gallery_dataset_name
        self._query_name = meta.query_dataset
        self._meta = meta
        self._gallery_size = gallery_size
        self._cross_camera = cross_camera
        self._det_thresh = det_thresh
        self._output_dir = output_dir
        self.use_gt_boxes = use_gt_boxes
        self._cpu = torch.device("cpu")
        self.reset()

    def reset(self):
        self._gallery = []
        self._queries = []

    def process(self, inputs, outputs):
        for record, output in zip(inputs, outputs):
            instances = output["instances"].to(self._cpu)
            embeddings = _numpy(instances.pred_embeddings) if instances.has("pred_embeddings") else None
            if "query_box" in record:
                self._queries.append(
                    {"query_id": record["query_id"], "image_id": record["image_id"], "embeddings": embeddings}
                )
                continue
            scores = _numpy(instances.scores)
            # Only kept detections matter to both protocols; dropping the rest bounds memory. Non-finite scores
            # stay, so that evaluate() names the image instead of the comparison dropping a NaN silently.
            keep = (scores >= self._det_thresh) | ~np.isfinite(scores)
            self._gallery.append(
                {
                    "image_id": record["image_id"],
                    "boxes": _numpy(instances.pred_boxes.tensor)[keep],
                    "scores": scores[keep],
                    "embeddings": None if embeddings is None else embeddings[keep],
                }
            )

    def evaluate(self):
        gallery, queries = self._gallery, self._queries
        if comm.get_world_size() > 1:
            comm.synchronize()
            gallery = list(itertools.chain(*comm.gather(gallery, dst=0)))
            queries = list(itertools.chain(*comm.gather(queries, dst=0)))
            if not comm.is_main_process():
                return {}
        gallery_dicts = DatasetCatalog.get(self._gallery_name)
        if not gallery_dicts:
            raise ValueError(f"gallery '{self._gallery_name}' has no images: nothing to search")
        query_dicts = sorted(DatasetCatalog.get(self._query_name), key=lambda d: d["query_id"])

        query_embeddings = self._query_embeddings(queries, query_dicts)
        per_image = self._gallery_records(gallery, gallery_dicts, query_embeddings.shape[1])
        detections = _stack_detections(per_image, query_embeddings.shape[1])

        results = OrderedDict()
        results["detection"] = self._detection_metrics(gallery_dicts, per_image)
        if self._meta.protocol == "cuhk_sysu":
            positives, galleries = self._cuhk_sysu_protocol(gallery_dicts, query_dicts)
        else:
            positives, galleries = self._prw_protocol(gallery_dicts, query_dicts)
        search = evaluate_search(query_embeddings, detections, positives, galleries)
        results["search"] = _search_summary(search, np.ones(len(query_dicts), dtype=bool))
        for flag, key in _QUERY_SUBSETS:
            members = np.array([bool(d.get(flag, False)) for d in query_dicts])
            if members.any():
                results[key] = _search_summary(search, members)

        no_positive = int(np.count_nonzero(search.num_positives == 0))
        if no_positive:
            logger.warning(f"{no_positive} queries of '{self._query_name}' have no positive gallery image (AP 0)")
        self._log_and_save(results)
        return copy.deepcopy(results)

    # ------------------------------------------------------------------------------------------ collected data

    def _query_embeddings(self, queries, query_dicts):
        """(Q, D) float32 in query_id order, validating every query record."""
        num_queries = len(query_dicts)
        if num_queries == 0:
            raise ValueError(f"query dataset '{self._query_name}' is empty")
        if [d["query_id"] for d in query_dicts] != list(range(num_queries)):
            raise ValueError(f"query dataset '{self._query_name}': query_id must be 0..{num_queries - 1}")
        by_id = {}
        for q in queries:
            qid = q["query_id"]
            if not isinstance(qid, (int, np.integer)) or not 0 <= qid < num_queries:
                raise ValueError(
                    f"query record with query_id {qid!r} (image '{q['image_id']}') is not a query of "
                    f"'{self._query_name}' (0..{num_queries - 1})"
                )
            emb = q["embeddings"]
            if emb is None or emb.shape[0] != 1:
                found = "no pred_embeddings" if emb is None else f"{emb.shape[0]} embeddings"
                raise ValueError(f"query_id {qid} (image '{q['image_id']}'): {found}, expected exactly one")
            by_id[int(qid)] = emb[0]
        missing = [i for i in range(num_queries) if i not in by_id]
        if missing:
            raise ValueError(
                f"{len(missing)} queries of '{self._query_name}' were never processed, e.g. query_id {missing[0]}"
            )
        dim = by_id[0].shape[0]
        for qid in range(num_queries):
            emb = by_id[qid]
            if emb.shape != (dim,):
                raise ValueError(f"query_id {qid}: embedding of shape {emb.shape}, expected ({dim},) like query 0")
            if not np.isfinite(emb).all():
                raise ValueError(f"query_id {qid}: embedding has NaN or infinite values")
        return np.stack([by_id[i] for i in range(num_queries)]).astype(np.float32)

    def _gallery_records(self, gallery, gallery_dicts, dim):
        """Validated gallery records in gallery dataset order."""
        by_id = {g["image_id"]: g for g in gallery}
        known = {d["image_id"] for d in gallery_dicts}
        unknown = [i for i in by_id if i not in known]
        if unknown:
            raise ValueError(f"image '{unknown[0]}' was processed but is not in gallery '{self._gallery_name}'")
        missing = [d["image_id"] for d in gallery_dicts if d["image_id"] not in by_id]
        if missing:
            raise ValueError(
                f"{len(missing)} images of gallery '{self._gallery_name}' were never processed, "
                f"e.g. image '{missing[0]}'"
            )
        records = []
        for d in gallery_dicts:
            g = by_id[d["image_id"]]
            _check_gallery_record(g, dim)
            if self.use_gt_boxes and len(g["boxes"]) != len(d["annotations"]):
                raise ValueError(
                    f"image '{d['image_id']}': use_gt_boxes expects one box per annotation "
                    f"({len(d['annotations'])}), got {len(g['boxes'])} (kept at det_thresh {self._det_thresh})"
                )
            records.append(g)
        return records

    # ------------------------------------------------------------------------------------------------ metrics

    def _detection_metrics(self, gallery_dicts, per_image):
        gt_all = [_annotation_boxes(d["annotations"]) for d in gallery_dicts]
        boxes = [g["boxes"] for g in per_image]
        scores = [g["scores"] for g in per_image]
        everything = evaluate_detections(gt_all, boxes, scores)
        labeled_gt, labeled_boxes, labeled_scores = [], [], []
        for d, b, s in zip(gallery_dicts, boxes, scores):
            labeled = [a for a in d["annotations"] if a["person_id"] >= 0]
            if labeled:  # images without labeled people are skipped, with their detections
                labeled_gt.append(_annotation_boxes(labeled))
                labeled_boxes.append(b)
                labeled_scores.append(s)
        labeled = evaluate_detections(labeled_gt, labeled_boxes, labeled_scores)
        return {
            "AP": 100.0 * everything["AP"],
            "recall": 100.0 * everything["recall"],
            "AP_labeled": 100.0 * labeled["AP"],
            "recall_labeled": 100.0 * labeled["recall"],
        }

    def _cuhk_sysu_protocol(self, gallery_dicts, query_dicts):
        """Positives and galleries from the metadata's ``search_protocol(gallery_size)``.

        The whole-set gallery (-1) is by definition every gallery image except the query's own; it is used as
        such (only its length is checked) instead of mapping 2,900 lists of ~7,000 names to indices.
        """
        entries = self._meta.search_protocol(self._gallery_size)
        if len(entries) != len(query_dicts):
            raise ValueError(
                f"search_protocol({self._gallery_size}) of '{self._gallery_name}' has {len(entries)} queries, "
                f"'{self._query_name}' has {len(query_dicts)}"
            )
        index = {d["image_id"]: i for i, d in enumerate(gallery_dicts)}
        query_image = np.array([index.get(q["image_id"], -1) for q in query_dicts], dtype=np.int64)
        whole_set = self._gallery_size == -1
        lists, pos_boxes = [], []
        for qid, entry in enumerate(entries):
            boxes = np.asarray(entry["positive_boxes"], dtype=np.float64).reshape(-1, 4)
            gallery = entry["gallery"]
            if whole_set:
                expected = len(gallery_dicts) - (query_image[qid] >= 0)
                if len(gallery) != expected:
                    raise ValueError(
                        f"search_protocol(-1), query_id {qid}: gallery of {len(gallery)} images, expected every "
                        f"image of '{self._gallery_name}' except the query image ({expected})"
                    )
                gallery = gallery[: boxes.shape[0]]
            lists.append(self._image_indices(index, gallery, qid))
            if boxes.shape[0] > len(entry["gallery"]):
                raise ValueError(
                    f"search_protocol({self._gallery_size}), query_id {qid}: {boxes.shape[0]} positive boxes "
                    f"for a gallery of {len(entry['gallery'])} images"
                )
            pos_boxes.append(boxes)
        counts = np.array([b.shape[0] for b in pos_boxes], dtype=np.int64)
        offsets = np.r_[0, np.cumsum([x.size for x in lists])].astype(np.int64)
        images = np.concatenate(lists) if lists else np.zeros(0, np.int64)
        # positives are the first len(positive_boxes) entries of each gallery list
        first_entries, owner = ragged_arange(offsets[:-1], counts)
        positives = SearchPositives(owner, images[first_entries], np.concatenate(pos_boxes))
        galleries = ExcludedGalleries(query_image) if whole_set else ListedGalleries(offsets, images)
        return positives, galleries

    def _image_indices(self, index, image_ids, qid):
        try:
            return np.fromiter(map(index.__getitem__, image_ids), np.int64, len(image_ids))
        except KeyError as e:
            raise ValueError(
                f"search_protocol({self._gallery_size}), query_id {qid}: gallery image {e} is not in "
                f"'{self._gallery_name}'"
            ) from None

    def _prw_protocol(self, gallery_dicts, query_dicts):
        """Positives from the gallery annotations: frames (other than the query's) holding the query's person."""
        index = {d["image_id"]: i for i, d in enumerate(gallery_dicts)}
        query_image = np.array([index.get(q["image_id"], -1) for q in query_dicts], dtype=np.int64)
        query_pid = np.array([q["person_id"] for q in query_dicts], dtype=np.int64)

        # one (person, image, box) row per labeled person per frame (the first box if a frame repeats a person)
        rows = [
            (a["person_id"], i, a["bbox"])
            for i, d in enumerate(gallery_dicts)
            for a in d["annotations"]
            if a["person_id"] >= 0
        ]
        pids = np.array([r[0] for r in rows], dtype=np.int64)
        images = np.array([r[1] for r in rows], dtype=np.int64)
        boxes = np.array([r[2] for r in rows], dtype=np.float64).reshape(-1, 4)
        _, first = np.unique(np.stack([pids, images]), axis=1, return_index=True)
        first = np.sort(first)
        order = first[np.argsort(pids[first], kind="stable")]
        pids, images, boxes = pids[order], images[order], boxes[order]

        lo = np.searchsorted(pids, query_pid, side="left")
        hi = np.searchsorted(pids, query_pid, side="right")
        row, query = ragged_arange(lo, hi - lo)
        keep = images[row] != query_image[query]
        if not self._cross_camera:
            return SearchPositives(query[keep], images[row[keep]], boxes[row[keep]]), ExcludedGalleries(query_image)
        cameras = _camera_ids(gallery_dicts, self._gallery_name)
        query_camera = _camera_ids(query_dicts, self._query_name)
        keep &= cameras[images[row]] != query_camera[query]
        positives = SearchPositives(query[keep], images[row[keep]], boxes[row[keep]])
        return positives, ExcludedGalleries(query_image, query_camera, cameras)

    # ---------------------------------------------------------------------------------------------- reporting

    def _log_and_save(self, results):
        settings = (
            f"gallery_size={self._gallery_size}" if self._meta.protocol == "cuhk_sysu"
            else f"cross_camera={self._cross_camera}"
        )
        for task, metrics in results.items():
            logger.info(
                f"Person search results of '{self._gallery_name}' ({settings}, det_thresh={self._det_thresh}, "
                f"use_gt_boxes={self.use_gt_boxes}), {task}:\n" + create_small_table(metrics)
            )
        if self._output_dir:
            PathManager.mkdirs(self._output_dir)
            path = os.path.join(self._output_dir, "person_search_results.json")
            record = {
                "gallery_dataset": self._gallery_name,
                "query_dataset": self._query_name,
                "protocol": self._meta.protocol,
                "gallery_size": self._gallery_size if self._meta.protocol == "cuhk_sysu" else None,
                "cross_camera": self._cross_camera,
                "det_thresh": self._det_thresh,
                "use_gt_boxes": self.use_gt_boxes,
                "results": results,
            }
            with PathManager.open(path, "w") as f:
                json.dump(record, f, indent=2)


def _numpy(tensor):
    """float32 numpy copy of a CPU tensor (any float dtype, including bfloat16)."""
    return tensor.detach().to(torch.float32).numpy()


def _annotation_boxes(annotations):
    return np.array([a["bbox"] for a in annotations], dtype=np.float64).reshape(-1, 4)


def _check_gallery_record(g, dim):
    image_id, emb = g["image_id"], g["embeddings"]
    num = len(g["boxes"])
    if emb is None:
        raise ValueError(f"gallery image '{image_id}': output instances have no pred_embeddings")
    if emb.ndim != 2 or emb.shape[0] != num:
        raise ValueError(f"gallery image '{image_id}': {num} boxes but embeddings of shape {tuple(emb.shape)}")
    if num and emb.shape[1] != dim:
        raise ValueError(
            f"gallery image '{image_id}': embedding dimension {emb.shape[1]}, expected {dim} (the queries')"
        )
    for name in ("boxes", "scores", "embeddings"):
        if not np.isfinite(g[name]).all():
            raise ValueError(f"gallery image '{image_id}': {name} contain NaN or infinite values")


def _camera_ids(dicts, dataset_name):
    """``camera_id`` of every record, which the cross-camera protocol needs."""
    missing = next((d for d in dicts if "camera_id" not in d), None)
    if missing is not None:
        raise ValueError(
            f"'{dataset_name}': record '{missing.get('image_id')}' has no camera_id, which cross_camera needs"
        )
    return np.array([d["camera_id"] for d in dicts], dtype=np.int64)


def _stack_detections(per_image, dim):
    counts = [len(g["boxes"]) for g in per_image]
    offsets = np.r_[0, np.cumsum(counts)].astype(np.int64)
    if offsets[-1] == 0:
        return GalleryDetections(np.zeros((0, 4)), np.zeros((0, dim), np.float32), offsets)
    boxes = np.concatenate([g["boxes"].reshape(-1, 4) for g in per_image]).astype(np.float64)
    embeddings = np.concatenate([g["embeddings"].reshape(-1, dim) for g in per_image]).astype(np.float32)
    return GalleryDetections(boxes, embeddings, offsets)


def _search_summary(result, members):
    """mAP and top-k (percent) over the queries selected by the boolean mask ``members``."""
    summary = {"mAP": 100.0 * float(result.average_precision[members].mean())}
    for k in _TOP_K:
        summary[f"top{k}"] = 100.0 * float(result.top_k(k)[members].mean())
    return summary
