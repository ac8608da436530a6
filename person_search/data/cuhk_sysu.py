"""CUHK-SYSU (Xiao et al., CVPR 2017): scene images, identity labels and the TestG search protocols.

``root`` is the dataset folder itself (the one holding ``Image/SSM`` and ``annotation``), see datasets/README.md.
Boxes are ``idlocate = (x, y, w, h)`` converted to ``[x, y, x + w, y + h]`` without a +-1 correction (as every
published Python pipeline does), after casting to float64: the .mat files store them as uint8/uint16, where
``x + w`` would wrap around.

TestG<k>.mat files (up to 2,900 x 4,000 gallery entries) are read with the streaming reader of
:mod:`.mat_stream` (scipy's loadmat takes minutes and over 10 GB for TestG4000; it remains the fallback for files
the reader does not support) and, when large, cached as plain npz arrays in $PERSON_SEARCH_CACHE (default
~/.cache/person_search; never in the dataset folder), keyed by the file's path, size and mtime.
"""
import copy
import functools
import hashlib
import logging
import os
import tempfile
import time

import numpy as np
from detectron2.structures import BoxMode

from .mat_stream import MatStreamError, StringTable, leaf_headers, leaf_numeric, open_struct, struct_field_offsets
from .mat_utils import image_size, load_mat_variable, mat_numbers, mat_string, require_path

__all__ = ["SPLITS", "GALLERY_SIZES", "load_cuhk_sysu", "cuhk_sysu_search_protocol", "cuhk_sysu_num_labeled"]

logger = logging.getLogger(__name__)

SPLITS = ("train", "gallery", "query")
# Gallery sizes with a TestG<k>.mat protocol file; -1 selects the whole test set (every pool image).
GALLERY_SIZES = (50, 100, 500, 1000, 2000, 4000)
FULL_GALLERY = -1
# Parsed TestG files are cached (npz, no pickle) when the file has at least this many bytes; bump
# _CACHE_FORMAT when the cached arrays change meaning.
CACHE_MIN_BYTES = 4 << 20
_STREAM_BATCH_BYTES = 16 << 20
_CACHE_FORMAT = "cuhk_sysu_testg/1"


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
    box = mat_numbers(value, where).reshape(-1)
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


# A parsed TestG file in compact form ("testg arrays"): ``names`` (distinct gallery image names), ``query_names``
# and ``query_xywh`` (Q, 4), and per query, in query order, its gallery as ids into ``names`` in protocol order
# (positives first, each group in file order) in ``gallery[offsets[i]:offsets[i + 1]]``, ``num_positive[i]`` and
# the positives' (x, y, w, h) as consecutive rows of ``positive_xywh``. The same arrays are cached on disk.
_TESTG_ARRAYS = ("gallery", "offsets", "num_positive", "positive_xywh", "query_xywh")


def _testg_loadmat(path, key):
    """Parse a TestG file with scipy's loadmat (slow and memory-hungry for large galleries; the reference)."""
    records = load_mat_variable(path, key, f"the CUHK-SYSU {key} protocol").reshape(-1)
    ids = {}  # image name -> id
    query_names, query_xywh, gallery, num_positive, positive_xywh = [], [], [], [], []
    for i, record in enumerate(records):
        where = f"{path}, {key}({i + 1})"
        query = _single_record(_field(record, "Query", where), f"{where}.Query")
        query_names.append(mat_string(_field(query, "imname", f"{where}.Query"), f"{where}.Query.imname"))
        query_xywh.append(_xywh(_field(query, "idlocate", f"{where}.Query"), f"{where}.Query.idlocate"))
        entries = np.asarray(_field(record, "Gallery", where)).reshape(-1)
        names = _gallery_names(_field(entries, "imname", f"{where}.Gallery"), f"{where}.Gallery")
        name_ids = np.array([ids.setdefault(n, len(ids)) for n in names], dtype=np.int64)
        locations = _field(entries, "idlocate", f"{where}.Gallery")
        # An empty idlocate marks a gallery image without the query person; do not assume positives come first.
        is_positive = np.fromiter((np.size(v) > 0 for v in locations), dtype=bool, count=len(locations))
        positive_xywh += [_xywh(locations[j], f"{where}.Gallery({j + 1}).idlocate")
                          for j in np.flatnonzero(is_positive)]
        gallery.append(np.concatenate([name_ids[is_positive], name_ids[~is_positive]]))
        num_positive.append(int(is_positive.sum()))
    return _testg_arrays(list(ids), query_names, query_xywh, gallery, [len(g) for g in gallery], num_positive,
                         positive_xywh)


def _testg_stream(path, key):
    """Parse a TestG file with the streaming reader (:mod:`.mat_stream`): same result as :func:`_testg_loadmat`.
    Raises MatStreamError where the file uses something the reader does not handle. Queries are processed in
    batches of about _STREAM_BATCH_BYTES so that numpy, not Python, loops over the gallery entries."""
    table = StringTable()
    query_ids, query_xywh, gallery, sizes, num_positive, positive_xywh = [], [], [], [], [], []

    def process(batch, first):
        parts, base = [], 0
        query_name, query_location, names, locations, counts = [], [], [], [], []
        for query_blob, gallery_blob in batch:
            dims, fields, offsets = struct_field_offsets(query_blob)
            if int(np.prod(dims)) != 1 or not {"imname", "idlocate"} <= set(fields):
                raise MatStreamError(f"{path}: a {key} Query is not a 1x1 struct with imname and idlocate")
            query_name.append(base + offsets[0, fields.index("imname")])
            query_location.append(base + offsets[0, fields.index("idlocate")])
            parts.append(query_blob)
            base += len(query_blob)
            dims, fields, offsets = struct_field_offsets(gallery_blob)
            if not {"imname", "idlocate"} <= set(fields):
                raise MatStreamError(f"{path}: a {key} Gallery has fields {fields}")
            if len(dims) != 2 or min(dims) > 1:  # loadmat's reshape(-1) is row-major, the file column-major
                offsets = offsets[np.arange(len(offsets)).reshape(dims, order="F").reshape(-1)]
            names.append(base + offsets[:, fields.index("imname")])
            locations.append(base + offsets[:, fields.index("idlocate")])
            counts.append(len(offsets))
            parts.append(gallery_blob)
            base += len(gallery_blob)
        buf = b"".join(parts)
        query_ids.extend(table.add(buf, leaf_headers(buf, query_name)).tolist())
        headers = leaf_headers(buf, query_location)
        for i in range(len(batch)):
            where = f"{path}, {key}({first + i + 1}).Query.idlocate"
            query_xywh.append(_xywh(leaf_numeric(buf, headers, i), where))
        name_ids = table.add(buf, leaf_headers(buf, np.concatenate(names)))
        headers = leaf_headers(buf, np.concatenate(locations))
        # An empty idlocate marks a gallery image without the query person; do not assume positives come first.
        is_positive = headers["rows"] * headers["cols"] > 0
        query_of = np.repeat(np.arange(len(batch)), counts)
        starts = np.concatenate([[0], np.cumsum(counts)])
        for j in np.flatnonzero(is_positive).tolist():
            q = int(query_of[j])
            where = f"{path}, {key}({first + q + 1}).Gallery({j - starts[q] + 1}).idlocate"
            positive_xywh.append(_xywh(leaf_numeric(buf, headers, j), where))
        order = np.lexsort((~is_positive, query_of))  # stable: per query, positives then negatives, in file order
        gallery.append(name_ids[order])
        sizes.extend(counts)
        num_positive.extend(np.bincount(query_of[is_positive], minlength=len(batch)).tolist())

    with open_struct(path, key) as stream:
        if not {"Query", "Gallery"} <= set(stream.fields) or sorted(stream.dims)[-2] > 1:
            raise MatStreamError(f"{path}: {key} is not a struct vector with fields Query and Gallery")
        query_field, gallery_field = stream.fields.index("Query"), stream.fields.index("Gallery")
        batch, batch_bytes, first = [], 0, 0
        for values in stream:
            batch.append((values[query_field], values[gallery_field]))
            batch_bytes += len(values[query_field]) + len(values[gallery_field])
            if batch_bytes >= _STREAM_BATCH_BYTES:
                process(batch, first)
                first, batch, batch_bytes = first + len(batch), [], 0
        if batch:
            process(batch, first)
    return _testg_arrays(table.strings, [table.strings[i] for i in query_ids], query_xywh, gallery, sizes,
                         num_positive, positive_xywh)


def _testg_arrays(names, query_names, query_xywh, gallery, sizes, num_positive, positive_xywh):
    """TestG arrays from lists: ``gallery`` = arrays of name ids whose concatenation holds the galleries of
    ``sizes`` entries each, in query order."""
    return {
        "names": list(names),
        "query_names": list(query_names),
        "query_xywh": np.array(query_xywh, dtype=np.float64).reshape(-1, 4),
        "gallery": np.concatenate(gallery).astype(np.int32) if gallery else np.zeros(0, np.int32),
        "offsets": np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)]).astype(np.int64),
        "num_positive": np.array(num_positive, dtype=np.int64),
        "positive_xywh": np.array(positive_xywh, dtype=np.float64).reshape(-1, 4),
    }


def _cache_dir():
    """Folder of the parsed-protocol cache: $PERSON_SEARCH_CACHE (empty: no cache), else ~/.cache/person_search."""
    folder = os.environ.get("PERSON_SEARCH_CACHE")
    if folder is None:
        return os.path.join(os.path.expanduser("~"), ".cache", "person_search")
    return folder or None


def _cache_entry(path, key):
    """(cache file, identity string) for the current version of ``path``, or (None, None) without a cache."""
    folder = _cache_dir()
    if folder is None:
        return None, None
    stat = os.stat(path)
    identity = f"{_CACHE_FORMAT}\n{os.path.abspath(path)}\n{stat.st_size}\n{stat.st_mtime_ns}\n{key}"
    digest = hashlib.sha256(identity.encode("utf-8")).hexdigest()[:24]
    return os.path.join(folder, f"cuhk_sysu_{key}_{digest}.npz"), identity


def _read_cache(cache_file, identity):
    try:
        with np.load(cache_file, allow_pickle=False) as saved:
            if str(saved["identity"]) != identity:
                return None
            arrays = {k: saved[k] for k in _TESTG_ARRAYS}
            arrays["names"] = saved["names"].tolist()
            arrays["query_names"] = saved["query_names"].tolist()
    except FileNotFoundError:
        return None
    except Exception as e:  # damaged or foreign file: parse again (and overwrite it)
        logger.warning(f"Ignoring unreadable cache file {cache_file} ({type(e).__name__}: {e})")
        return None
    return arrays


def _write_cache(cache_file, identity, arrays):
    folder = os.path.dirname(cache_file)
    try:
        os.makedirs(folder, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".tmp-", suffix=".npz", delete=False) as f:
            tmp = f.name
            np.savez(f, identity=np.array(identity), names=np.array(arrays["names"], dtype=str),
                     query_names=np.array(arrays["query_names"], dtype=str), **{k: arrays[k] for k in _TESTG_ARRAYS})
        os.replace(tmp, cache_file)
    except OSError as e:
        logger.warning(f"Could not write the protocol cache {cache_file} ({e}); set PERSON_SEARCH_CACHE to a "
                       f"writable folder (or to an empty string to turn the cache off)")
        try:
            os.remove(tmp)
        except (OSError, NameError):
            pass


def _parse_testg(path, key):
    """TestG arrays of ``path``: from the cache if it holds this version of the file, else parsed (streaming
    reader; loadmat for files it cannot read) and cached when the file is at least CACHE_MIN_BYTES."""
    cache_file, identity = _cache_entry(path, key)
    arrays = _read_cache(cache_file, identity) if cache_file else None
    if arrays is not None:
        return arrays
    start = time.perf_counter()
    try:
        arrays = _testg_stream(path, key)
    except (MatStreamError, ValueError) as e:
        logger.info(f"{path}: streaming reader not usable ({e}); parsing with scipy.io.loadmat")
        arrays = _testg_loadmat(path, key)
    logger.info(f"Parsed {path} in {time.perf_counter() - start:.1f} s")
    if cache_file and os.path.getsize(path) >= CACHE_MIN_BYTES:
        _write_cache(cache_file, identity, arrays)
    return arrays


@functools.lru_cache(maxsize=None)
def _testg(root, gallery_size):
    """Parse TestG<k>.mat once.

    Returns ``(queries, positives, protocol)``, each in query order: ``queries[i] = (image name, xywh)``,
    ``positives[i]`` = the (image name, xywh) of the gallery entries that contain query i's person, and
    ``protocol[i] = {"gallery": [names, positives first], "positive_boxes": float32 (n, 4) x1y1x2y2}``.
    """
    key = f"TestG{gallery_size}"
    path = require_path(_testg_path(root, gallery_size), f"the CUHK-SYSU gallery-size-{gallery_size} protocol")
    arrays = _parse_testg(path, key)
    names = np.empty(len(arrays["names"]), dtype=object)  # one str object per image name
    names[:] = arrays["names"]
    queries = list(zip(arrays["query_names"], map(tuple, arrays["query_xywh"].tolist())))
    positives, protocol = [], []
    offsets, num_positive = arrays["offsets"].tolist(), arrays["num_positive"].tolist()
    first_positive = 0
    for i, n in enumerate(num_positive):
        gallery = names[arrays["gallery"][offsets[i]:offsets[i + 1]]].tolist()
        xywh = arrays["positive_xywh"][first_positive:first_positive + n]
        first_positive += n
        positives.append(list(zip(gallery[:n], map(tuple, xywh.tolist()))))
        protocol.append({"gallery": gallery, "positive_boxes": _xyxy(xywh, np.float32)})
    return queries, positives, protocol


def _xyxy(xywh, dtype=np.float64):
    """(n, 4) x1y1x2y2 from (n, 4) xywh (no +-1 correction)."""
    xywh = np.asarray(xywh, dtype=np.float64).reshape(-1, 4)
    return np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1).astype(dtype)


def _check_query_order(root, gallery_size, queries50):
    """Protocol of TestG<gallery_size>, after checking that it lists TestG50's queries in TestG50's order (the
    query set is read from TestG50, and protocol entry i belongs to query i)."""
    queries, _, protocol = _testg(root, gallery_size)
    if queries != queries50:
        i = next((i for i, (a, b) in enumerate(zip(queries, queries50)) if a != b), min(len(queries), len(queries50)))
        found = queries[i] if i < len(queries) else "no query"
        expected = queries50[i] if i < len(queries50) else "no query"
        raise ValueError(
            f"{_testg_path(root, gallery_size)}: query {i + 1} is {found}, but TestG50.mat has {expected} there "
            f"({len(queries)} vs {len(queries50)} queries); every TestG file must list the same queries in the "
            "same order"
        )
    return protocol


@functools.lru_cache(maxsize=None)
def _search_protocol(root, gallery_size):
    queries, _, protocol50 = _testg(root, 50)
    if gallery_size != FULL_GALLERY:
        return _check_query_order(root, gallery_size, queries)
    pool = _pool(root)
    positions = {}  # name -> its positions in pool.mat
    for i, name in enumerate(pool):
        positions.setdefault(name, []).append(i)
    full = []
    for (query_image, _), entry in zip(queries, protocol50):
        positive_images = entry["gallery"][: len(entry["positive_boxes"])]
        # The pool without the query image and the positives: copied slice by slice around those few images.
        cut = sorted(i for name in {query_image, *positive_images} for i in positions.get(name, ()))
        gallery, start = list(positive_images), 0
        for i in cut:
            gallery += pool[start:i]
            start = i + 1
        gallery += pool[start:]
        full.append({"gallery": gallery, "positive_boxes": entry["positive_boxes"]})
    return full


def cuhk_sysu_search_protocol(root, gallery_size):
    """The CUHK-SYSU search protocol for one gallery size, in query order (the order of ``load_cuhk_sysu(root,
    "query")``).

    Returns one dict per query: ``{"gallery": [image_id, ...], "positive_boxes": float32 (n, 4)}``, where the
    first n gallery images contain the query person at ``positive_boxes`` (x1y1x2y2). ``gallery_size`` is one of
    :data:`GALLERY_SIZES` (parses ``TestG<k>.mat`` and ``TestG50.mat``, and checks that both list the same queries
    in the same order) or -1: positives of TestG50 followed by every other pool
    image except the query image. Parsed once per (root, size); the returned list is shared: do not modify it.
    Reads only annotation files (no image is needed).
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
