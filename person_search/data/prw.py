"""PRW (Zheng et al., CVPR 2017): video frames of 6 cameras, per-frame box annotations and 2,057 queries.

``root`` is the dataset folder itself (``PRW/`` or, as it unpacks, ``PRW-v16.04.20/``), see datasets/README.md.
Annotation rows are ``[pid, x, y, w, h]``; negative x, y are clipped to 0 and then ``x2 = x + w``, ``y2 = y + h``
(the published pipelines do the same, so boxes that start left of the image are shifted, not cut). Raw pid -2
marks an unlabeled person and becomes -1.
"""
import copy
import functools
import logging
import os
import re

import numpy as np
from detectron2.structures import BoxMode
from scipy.io import loadmat

from .mat_utils import image_size, load_mat_variable, mat_numbers, mat_strings, require_path

__all__ = ["SPLITS", "load_prw", "prw_num_labeled", "resolve_prw_root", "camera_id"]

logger = logging.getLogger(__name__)

SPLITS = ("train", "gallery", "query")
UNLABELED_RAW_PID = -2
# Keys under which PRW annotation files store the (N, 5) box array; the first one present is used.
ANNOTATION_KEYS = ("box_new", "anno_file", "anno_previous")
RELEASE_FOLDER = "PRW-v16.04.20"
_CAMERA = re.compile(r"c(\d)")


def resolve_prw_root(root):
    """``root`` if it exists, else its sibling ``PRW-v16.04.20`` (the folder name of the unpacked release)."""
    root = os.path.abspath(root)
    if not os.path.isdir(root):
        release = os.path.join(os.path.dirname(root), RELEASE_FOLDER)
        if os.path.isdir(release):
            return release
    return root


def camera_id(frame, where):
    """Camera number (1..6) of a frame name such as ``c3s2_044587``: the first ``c<digit>`` in it."""
    match = _CAMERA.search(frame)
    if match is None:
        raise ValueError(f"{where}: frame name {frame!r} has no camera id 'c<digit>'")
    return int(match.group(1))


def _clip_xywh_to_xyxy(xywh):
    """(n, 4) float64 xywh -> x1y1x2y2 with x, y clipped at 0 before adding w, h."""
    xy = np.maximum(xywh[:, :2], 0.0)
    return np.concatenate([xy, xy + xywh[:, 2:]], axis=1)


@functools.lru_cache(maxsize=None)
def _frames(root, split):
    """Frame names (without extension) of frame_train.mat or frame_test.mat, in file order."""
    file_name, key = {"train": ("frame_train.mat", "img_index_train"), "gallery": ("frame_test.mat", "img_index_test")}[
        split
    ]
    path = os.path.join(root, file_name)
    return mat_strings(load_mat_variable(path, key, f"the PRW {split} frame list"), path)


@functools.lru_cache(maxsize=None)
def _train_ids(root):
    """Sorted raw pids of ID_train.mat."""
    path = os.path.join(root, "ID_train.mat")
    ids = mat_numbers(load_mat_variable(path, "ID_train", "the PRW training identities"), f"{path}, ID_train")
    if ids.size == 0 or np.any(ids != np.round(ids)) or np.any(ids < 0):
        raise ValueError(f"{path}: expected a non-empty vector of integer person ids >= 0")
    return tuple(sorted(set(int(i) for i in ids.reshape(-1))))


def prw_num_labeled(root):
    """Number of labeled training identities (the ids listed in ID_train.mat)."""
    return len(_train_ids(resolve_prw_root(root)))


def _read_annotation(path):
    """(pids int64 (n,), x1y1x2y2 float64 (n, 4)) of one frame, zero-size boxes removed; also #removed."""
    require_path(path, "PRW frame annotation")
    try:
        variables = loadmat(path)
    except Exception as e:  # scipy raises ValueError, TypeError, OSError ... for damaged files
        raise ValueError(f"{path}: cannot read the PRW annotation as a MATLAB file ({type(e).__name__}: {e})") from e
    key = next((k for k in ANNOTATION_KEYS if k in variables), None)
    if key is None:
        found = sorted(k for k in variables if not k.startswith("__"))
        raise ValueError(f"{path}: expected one of the variables {ANNOTATION_KEYS}, found {found}")
    rows = mat_numbers(variables[key], f"{path}, {key!r}")
    if rows.size == 0:
        rows = rows.reshape(0, 5)
    if rows.ndim != 2 or rows.shape[1] != 5:
        raise ValueError(f"{path}: {key!r} must be an (N, 5) array of [pid, x, y, w, h] rows, got {rows.shape}")
    pids = rows[:, 0]
    bad = (pids != np.round(pids)) | ((pids < 0) & (pids != UNLABELED_RAW_PID))
    if bad.any():
        raise ValueError(f"{path}: row {int(np.flatnonzero(bad)[0]) + 1}: pid must be an id >= 0 or "
                         f"{UNLABELED_RAW_PID} (unlabeled), got {pids[bad][0]}")
    keep = (rows[:, 3] > 0) & (rows[:, 4] > 0)
    pids = np.where(pids == UNLABELED_RAW_PID, -1, pids).astype(np.int64)
    return pids[keep], _clip_xywh_to_xyxy(rows[keep, 1:]), int((~keep).sum())


def _frame_dict(root, frame, boxes, person_ids):
    file_name = os.path.join(root, "frames", frame + ".jpg")
    height, width = image_size(file_name)
    return {
        "file_name": file_name,
        "image_id": frame + ".jpg",
        "height": height,
        "width": width,
        "camera_id": camera_id(frame, file_name),
        "annotations": [
            {"bbox": box.tolist(), "bbox_mode": BoxMode.XYXY_ABS, "category_id": 0, "person_id": int(pid)}
            for box, pid in zip(boxes, person_ids)
        ],
    }


def _load_frames(root, split):
    """Train dicts (pids remapped through ID_train.mat) or gallery dicts (raw pids), -2 -> -1 in both."""
    if split == "train":
        label = {pid: index for index, pid in enumerate(_train_ids(root))}
    dicts = []
    dropped = unknown = empty = 0
    for frame in _frames(root, split):
        pids, boxes, removed = _read_annotation(os.path.join(root, "annotations", frame + ".jpg.mat"))
        dropped += removed
        if split == "train":
            unknown += int(sum(1 for p in pids if p >= 0 and p not in label))
            pids = [label.get(int(p), -1) for p in pids]
            if len(boxes) == 0:
                empty += 1
                continue
        dicts.append(_frame_dict(root, frame, boxes, pids))
    if dropped:
        logger.warning(f"PRW {split}: dropped {dropped} boxes with zero width or height")
    if unknown:
        logger.warning(f"PRW train: {unknown} boxes have a pid that is not in ID_train.mat; they are unlabeled (-1)")
    if empty:
        logger.warning(f"PRW train: skipped {empty} frames without any box")
    return dicts


def _parse_query_line(line, where):
    """(pid, x1y1x2y2 list, frame) of one ``pid x y w h frame`` line of query_info.txt."""
    tokens = line.split()
    try:
        if len(tokens) != 6:
            raise ValueError(f"{len(tokens)} fields")
        pid = int(tokens[0])
        x, y, w, h = (float(t) for t in tokens[1:5])
        if not np.isfinite([x, y, w, h]).all():
            raise ValueError("non-finite box")
    except ValueError as e:
        raise ValueError(f"{where}: expected 'pid x y w h frame', got {line.strip()!r} ({e})") from None
    # Unlike the annotations, query boxes are cut at the image border: x2 = x + w from the unclipped x.
    return pid, np.maximum([x, y, x + w, y + h], 0.0).tolist(), tokens[5]


def _load_query(root):
    path = require_path(os.path.join(root, "query_info.txt"), "PRW query list")
    with open(path, newline="") as f:
        lines = f.read().splitlines()  # handles the file's CRLF line ends
    dicts = []
    for line_number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path}, line {line_number}"
        pid, box, frame = _parse_query_line(line, where)
        file_name = os.path.join(root, "frames", frame + ".jpg")
        height, width = image_size(file_name)
        dicts.append(
            {
                "file_name": file_name,
                "image_id": frame + ".jpg",
                "height": height,
                "width": width,
                "query_box": box,
                "person_id": pid,
                "query_id": len(dicts),
                "camera_id": camera_id(frame, where),
            }
        )
    return dicts


@functools.lru_cache(maxsize=None)
def _load(root, split):
    require_path(root, "PRW dataset folder")
    return _load_query(root) if split == "query" else _load_frames(root, split)


def load_prw(root, split):
    """Dataset dicts of one PRW split ("train", "gallery" or "query"), see datasets/README.md.

    train: frame_train.mat frames with a box, ``person_id`` = index of the raw pid in the sorted ID_train.mat ids,
    -1 for unlabeled or unknown ids. gallery: all frame_test.mat frames, ``person_id`` = raw pid (-1 unlabeled).
    query: query_info.txt lines with ``query_box``, ``person_id`` = raw pid and ``query_id`` = line order. Train
    and gallery dicts carry ``camera_id``. Parsed once per (root, split); each call returns a copy.
    """
    if split not in SPLITS:
        raise ValueError(f"PRW split must be one of {SPLITS}, got {split!r}")
    return copy.deepcopy(_load(resolve_prw_root(root), split))
