"""CUHK-SYSU (Xiao et al., CVPR 2017): scene images, identity labels and the TestG search protocols.

``root`` is the dataset folder itself (the one holding ``Image/SSM`` and ``annotation``), see datasets/README.md.
Boxes are ``idlocate = (x, y, w, h)`` converted to ``[x, y, x + w, y + h]`` without a +-1 correction (as every
published Python pipeline does), after casting to float64: the .mat files store them as uint8/uint16, where
``x + w`` would wrap around.
"""
import copy
import functools
import logging
import os

import numpy as np
from detectron2.structures import BoxMode

from .mat_utils import image_size, load_mat_variable, mat_string, require_path

__all__ = ["SPLITS", "GALLERY_SIZES", "load_cuhk_sysu", "cuhk_sysu_search_protocol", "cuhk_sysu_num_labeled"]

logger = logging.getLogger(__name__)

SPLITS = ("train", "gallery", "query")
# Gallery sizes with a TestG<k>.mat protocol file; -1 selects the whole test set (every pool image).
GALLERY_SIZES = (50, 100, 500, 1000, 2000, 4000)
FULL_GALLERY = -1


def _annotation_path(root, *parts):
    return os.path.join(root, "annotation", *parts)


def _testg_path(root, gallery_size):
    return _annotation_path(root, "test", "train_test", f"TestG{gallery_size}.mat")


def _field(record, name, where):
    """Field ``name`` of a MATLAB struct record, or a ValueError naming where it was expected."""
    names = record.dtype.names or ()
    if name not in names:
        raise ValueError(f"{where}: expected a MATLAB struct with field {name!r}, found fields {list(names)}")
    return record[name]


def _single_record(value, where):
    """The one record of a 1x1 MATLAB struct (loadmat wraps it in a (1, 1) structured array)."""
    array = np.asarray(value).reshape(-1)
    if array.size != 1 or array.dtype.names is None:
        raise ValueError(f"{where}: expected a 1x1 MATLAB struct, got {array.dtype} array of {array.size} items")
    return array[0]


def _xywh(value, where):
    """(x, y, w, h) of one ``idlocate`` value as a float64 tuple (cast before any arithmetic: uint8 overflow)."""
    box = np.asarray(value, dtype=np.float64).reshape(-1)
    if box.size != 4:
        raise ValueError(f"{where}: expected idlocate = (x, y, w, h), got {box.size} numbers")
    return tuple(box.tolist())


def _struct_boxes(struct, where):
    """(n, 4) float64 (x, y, w, h) of the ``idlocate`` fields of a MATLAB struct array (n may be 0)."""
    array = np.asarray(struct).reshape(-1)
    if array.size == 0:
        return np.zeros((0, 4))
    values = _field(array, "idlocate", where)
    return np.array([_xywh(v, f"{where}({j + 1}).idlocate") for j, v in enumerate(values)], dtype=np.float64)


def _find_box(boxes, xywh):
    """Index of the row of ``boxes`` (n, 4) equal to ``xywh``, or -1."""
    hits = np.flatnonzero((boxes == np.asarray(xywh)).all(axis=1))
    return int(hits[0]) if hits.size else -1


@functools.lru_cache(maxsize=None)
def _scene_boxes(root):
    """Image name -> (n, 4) float64 (x, y, w, h) boxes of Images.mat, zero-size boxes removed."""
    path = _annotation_path(root, "Images.mat")
    records = load_mat_variable(path, "Img", "CUHK-SYSU image annotations").reshape(-1)
    boxes = {}
    dropped = 0
    for i, record in enumerate(records):
        where = f"{path}, Img({i + 1})"
        name = mat_string(_field(record, "imname", where), f"{where}.imname")
        xywh = _struct_boxes(_field(record, "box", where), f"{where}.box")
        keep = (xywh[:, 2] > 0) & (xywh[:, 3] > 0)
        dropped += int((~keep).sum())
        boxes[name] = xywh[keep]
    if dropped:
        logger.warning(f"{path}: dropped {dropped} boxes with zero width or height")
    return boxes


@functools.lru_cache(maxsize=None)
def _pool(root):
    """Names of the test (gallery) images, in pool.mat order."""
    path = _annotation_path(root, "pool.mat")
    cells = load_mat_variable(path, "pool", "the CUHK-SYSU test image list").reshape(-1)
    return tuple(mat_string(c, f"{path}, pool{{{i + 1}}}") for i, c in enumerate(cells))


@functools.lru_cache(maxsize=None)
def _train_identities(root):
    """For each Train.mat identity, in file order, its appearances as (image name, (x, y, w, h))."""
    path = _annotation_path(root, "test", "train_test", "Train.mat")
    cells = load_mat_variable(path, "Train", "the CUHK-SYSU training identities").reshape(-1)
    identities = []
    for j, cell in enumerate(cells):
        where = f"{path}, Train{{{j + 1}}}"
        person = _single_record(cell, where)
        scene = np.asarray(_field(person, "scene", where)).reshape(-1)
        identities.append(
            [
                (
                    mat_string(_field(s, "imname", f"{where}.scene({k + 1})"), f"{where}.scene({k + 1}).imname"),
                    _xywh(_field(s, "idlocate", f"{where}.scene({k + 1})"), f"{where}.scene({k + 1}).idlocate"),
                )
                for k, s in enumerate(scene)
            ]
        )
    return identities


def _gallery_names(values, where):
    """Image names of a TestG Gallery struct's ``imname`` column, without a Python call per entry if possible."""
    try:
        names = np.concatenate(values.tolist())
    except ValueError:
        names = None
    if names is None or names.dtype.kind != "U" or names.size != len(values):
        # Malformed somewhere: the per-entry path names the bad entry.
        return [mat_string(v, f"{where}({j + 1}).imname") for j, v in enumerate(values)]
    return names.tolist()


@functools.lru_cache(maxsize=None)
def _testg(root, gallery_size):
    """Parse TestG<k>.mat once.

    Returns ``(queries, positives, protocol)``, each in query order: ``queries[i] = (image name, xywh)``,
    ``positives[i]`` = the (image name, xywh) of the gallery entries that contain query i's person, and
    ``protocol[i] = {"gallery": [names, positives first], "positive_boxes": float32 (n, 4) x1y1x2y2}``.
    """
    key = f"TestG{gallery_size}"
    path = _testg_path(root, gallery_size)
    records = load_mat_variable(path, key, f"the CUHK-SYSU gallery-size-{gallery_size} protocol").reshape(-1)
    interned = {}  # one str object per image name: a name is repeated in up to thousands of galleries
    queries, positives, protocol = [], [], []
    for i, record in enumerate(records):
        where = f"{path}, {key}({i + 1})"
        query = _single_record(_field(record, "Query", where), f"{where}.Query")
        queries.append(
            (
                mat_string(_field(query, "imname", f"{where}.Query"), f"{where}.Query.imname"),
                _xywh(_field(query, "idlocate", f"{where}.Query"), f"{where}.Query.idlocate"),
            )
        )
        gallery = np.asarray(_field(record, "Gallery", where)).reshape(-1)
        names = [
            interned.setdefault(n, n)
            for n in _gallery_names(_field(gallery, "imname", f"{where}.Gallery"), f"{where}.Gallery")
        ]
        locations = _field(gallery, "idlocate", f"{where}.Gallery")
        # An empty idlocate marks a gallery image without the query person; do not assume positives come first.
        is_positive = np.fromiter((np.size(v) > 0 for v in locations), dtype=bool, count=len(locations))
        positive_idx = np.flatnonzero(is_positive)
        xywh = [_xywh(locations[j], f"{where}.Gallery({j + 1}).idlocate") for j in positive_idx]
        positives.append([(names[j], box) for j, box in zip(positive_idx, xywh)])
        ordered = [names[j] for j in positive_idx] + [names[j] for j in np.flatnonzero(~is_positive)]
        protocol.append({"gallery": ordered, "positive_boxes": _xyxy(np.array(xywh).reshape(-1, 4), np.float32)})
    return queries, positives, protocol


def _xyxy(xywh, dtype=np.float64):
    """(n, 4) x1y1x2y2 from (n, 4) xywh (no +-1 correction)."""
    xywh = np.asarray(xywh, dtype=np.float64).reshape(-1, 4)
    return np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1).astype(dtype)


@functools.lru_cache(maxsize=None)
def _search_protocol(root, gallery_size):
    if gallery_size != FULL_GALLERY:
        return _testg(root, gallery_size)[2]
    queries, _, protocol50 = _testg(root, 50)
    pool = _pool(root)
    full = []
    for (query_image, _), entry in zip(queries, protocol50):
        positive_images = entry["gallery"][: len(entry["positive_boxes"])]
        excluded = set(positive_images)
        excluded.add(query_image)
        full.append(
            {
                "gallery": positive_images + [name for name in pool if name not in excluded],
                "positive_boxes": entry["positive_boxes"],
            }
        )
    return full


def cuhk_sysu_search_protocol(root, gallery_size):
    """The CUHK-SYSU search protocol for one gallery size, in query order (the order of ``load_cuhk_sysu(root,
    "query")``).

    Returns one dict per query: ``{"gallery": [image_id, ...], "positive_boxes": float32 (n, 4)}``, where the
    first n gallery images contain the query person at ``positive_boxes`` (x1y1x2y2). ``gallery_size`` is one of
    :data:`GALLERY_SIZES` (parses only ``TestG<k>.mat``) or -1: positives of TestG50 followed by every other pool
    image except the query image. Parsed once per (root, size); the returned list is shared: do not modify it.
    """
    if gallery_size != FULL_GALLERY and gallery_size not in GALLERY_SIZES:
        raise ValueError(f"CUHK-SYSU gallery size must be one of {GALLERY_SIZES} or -1 (full set), got {gallery_size}")
    return _search_protocol(os.path.abspath(root), gallery_size)


def cuhk_sysu_num_labeled(root):
    """Number of labeled training identities (entries of Train.mat; 5,532 in the real dataset)."""
    return len(_train_identities(os.path.abspath(root)))


def _image_dict(root, name, xywh, person_ids):
    file_name = os.path.join(root, "Image", "SSM", name)
    height, width = image_size(file_name)
    return {
        "file_name": file_name,
        "image_id": name,
        "height": height,
        "width": width,
        "annotations": [
            {"bbox": box.tolist(), "bbox_mode": BoxMode.XYXY_ABS, "category_id": 0, "person_id": int(pid)}
            for box, pid in zip(_xyxy(xywh), person_ids)
        ],
    }


def _label_boxes(boxes, person_ids, appearances, pid):
    """Give ``pid`` to each appearance's box. Returns (#appearances without a box, #boxes already labeled)."""
    missing = conflicts = 0
    for name, xywh in appearances:
        index = _find_box(boxes[name], xywh) if name in person_ids else -1
        if index < 0:
            missing += 1
        elif person_ids[name][index] not in (-1, pid):
            conflicts += 1
        else:
            person_ids[name][index] = pid
    return missing, conflicts


def _warn_labels(path, missing, conflicts):
    if missing:
        logger.warning(f"{path}: {missing} labeled boxes match no box of their image; they are left out")
    if conflicts:
        logger.warning(f"{path}: {conflicts} labeled boxes were already labeled with another identity; kept the first")


def _load_train(root):
    boxes = _scene_boxes(root)
    pool = set(_pool(root))
    names = sorted(name for name in boxes if name not in pool)
    person_ids = {name: np.full(len(boxes[name]), -1, dtype=np.int64) for name in names}
    missing = conflicts = 0
    for pid, appearances in enumerate(_train_identities(root)):
        m, c = _label_boxes(boxes, person_ids, appearances, pid)
        missing, conflicts = missing + m, conflicts + c
    _warn_labels(_annotation_path(root, "test", "train_test", "Train.mat"), missing, conflicts)
    empty = [name for name in names if len(boxes[name]) == 0]
    if empty:
        logger.warning(f"CUHK-SYSU train: skipped {len(empty)} images without any non-empty box (e.g. {empty[0]})")
    return [_image_dict(root, n, boxes[n], person_ids[n]) for n in names if len(boxes[n])]


def _load_gallery(root):
    boxes = _scene_boxes(root)
    pool = _pool(root)
    unknown = [name for name in pool if name not in boxes]
    if unknown:
        raise ValueError(f"{_annotation_path(root, 'pool.mat')}: {len(unknown)} pool images are not in Images.mat, "
                         f"e.g. {unknown[0]!r}")
    person_ids = {name: np.full(len(boxes[name]), -1, dtype=np.int64) for name in pool}
    queries, positives, _ = _testg(root, 50)
    missing = conflicts = 0
    for query_index, (query, gallery_positives) in enumerate(zip(queries, positives)):
        m, c = _label_boxes(boxes, person_ids, [query] + gallery_positives, query_index)
        missing, conflicts = missing + m, conflicts + c
    _warn_labels(_testg_path(root, 50), missing, conflicts)
    return [_image_dict(root, name, boxes[name], person_ids[name]) for name in pool]


def _subset_queries(root, file_name, key):
    """(image name, xywh) of the queries listed in a subset file, or None (with a warning) if it is missing."""
    path = _annotation_path(root, "test", "subset", file_name)
    if not os.path.exists(path):
        logger.warning(f"{path} not found: the {key} query flags are all False")
        return None
    records = load_mat_variable(path, key, "a CUHK-SYSU query subset").reshape(-1)
    members = set()
    for i, record in enumerate(records):
        where = f"{path}, {key}({i + 1}).Query"
        query = _single_record(_field(record, "Query", where), where)
        members.add((mat_string(_field(query, "imname", where), f"{where}.imname"),
                     _xywh(_field(query, "idlocate", where), f"{where}.idlocate")))
    return members


def _load_query(root):
    queries, _, _ = _testg(root, 50)
    subsets = {
        "occlusion": _subset_queries(root, "Occlusion.mat", "Occlusion1"),
        "resolution": _subset_queries(root, "Resolution.mat", "Test_Size"),
    }
    for flag, members in subsets.items():
        unmatched = (members or set()) - set(queries)
        if unmatched:
            logger.warning(f"CUHK-SYSU {flag} subset: {len(unmatched)} queries are not TestG50 queries; ignored")
    dicts = []
    for index, (name, xywh) in enumerate(queries):
        file_name = os.path.join(root, "Image", "SSM", name)
        height, width = image_size(file_name)
        record = {
            "file_name": file_name,
            "image_id": name,
            "height": height,
            "width": width,
            "query_box": _xyxy(xywh)[0].tolist(),
            "person_id": index,
            "query_id": index,
        }
        for flag, members in subsets.items():
            record[flag] = members is not None and (name, xywh) in members
        dicts.append(record)
    return dicts


@functools.lru_cache(maxsize=None)
def _load(root, split):
    require_path(root, "CUHK-SYSU dataset folder")
    return {"train": _load_train, "gallery": _load_gallery, "query": _load_query}[split](root)


def load_cuhk_sysu(root, split):
    """Dataset dicts of one CUHK-SYSU split ("train", "gallery" or "query"), see datasets/README.md.

    train: the 11,206 non-pool images (sorted by name), ``person_id`` = Train.mat index (0..5531) or -1.
    gallery: the 6,978 pool images in pool order, ``person_id`` = index of the TestG50 query whose person the box
    is, else -1. query: the 2,900 TestG50 queries with ``query_box``, ``person_id`` = ``query_id`` = index and
    the ``occlusion`` / ``resolution`` subset flags. Parsed once per (root, split); each call returns a copy.
    """
    if split not in SPLITS:
        raise ValueError(f"CUHK-SYSU split must be one of {SPLITS}, got {split!r}")
    return copy.deepcopy(_load(os.path.abspath(root), split))
