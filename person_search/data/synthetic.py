"""Synthetic CUHK-SYSU, PRW and Market-1501 datasets in the real on-disk formats.

The files follow docs in ``DATASETS_AND_EVAL.md`` sections 1, 2 and 4.1 field by field, including the quirks real
loaders must survive: CUHK-SYSU boxes stored as uint8 when they fit (so ``x + w`` overflows unless cast), empty
``idlocate`` for negative gallery entries, PRW's three annotation keys, ``-2`` unlabeled pids, slightly negative
coordinates, CRLF lines in ``query_info.txt`` and non-contiguous raw pids.

Every image is planned from its own random stream (``seed``, dataset, image index), so annotations do not depend on
whether images are drawn (``write_images=False`` writes annotations only) and a seed gives identical content (PRW's
.mat files, written by scipy's savemat, differ only in the creation time in their headers).

A ``synthetic.json`` marker in the output root records the generator, its parameters and the identities' traits.
Generators refuse to write into a non-empty folder without that marker unless ``overwrite=True``; with the marker,
the previous synthetic output is replaced.
"""
import json
import logging
import os
import shutil
import struct
import time
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import cv2
import numpy as np
import scipy.io
from tqdm import tqdm

from .synthetic_render import (
    Appearance,
    PersonRequest,
    PlacedPerson,
    ScenePlan,
    place_people,
    render_background,
    render_person,
    render_scene,
    sample_identities,
    sample_traits,
)

__all__ = [
    "MARKER_FILE",
    "PRESETS",
    "GenerationSummary",
    "generate_cuhk_sysu",
    "generate_prw",
    "generate_market1501",
    "generate",
    "check_output_dir",
]

logger = logging.getLogger(__name__)

MARKER_FILE = "synthetic.json"
_GENERATOR = "person_search.data.synthetic"
_JPEG_PARAMS = [int(cv2.IMWRITE_JPEG_QUALITY), 92]
_FORMAT_CODES = {"cuhk_sysu": 1, "prw": 2, "market1501": 3}

# Size presets per format. "full" reproduces the real dataset's counts (use write_images=False to measure loading).
PRESETS: Dict[str, Dict[str, dict]] = {
    "cuhk_sysu": {
        "tiny": dict(num_identities=12, num_train_images=30, num_test_images=56, num_queries=8,
                     people_per_image=(2, 4), image_size=(240, 320), gallery_sizes=(50,)),
        "demo": dict(num_identities=30, num_train_images=240, num_test_images=120, num_queries=30,
                     people_per_image=(2, 5), image_size=(240, 320), gallery_sizes=(50, 100),
                     appearances_per_id=(4, 10)),
        "benchmark": dict(num_identities=600, num_train_images=3000, num_test_images=1200, num_queries=300,
                          people_per_image=(2, 6), image_size=(360, 480), gallery_sizes=(50, 100, 500, 1000)),
        "full": dict(num_identities=5532, num_train_images=11206, num_test_images=6978, num_queries=2900,
                     people_per_image=(2, 9), image_size=(600, 800),
                     gallery_sizes=(50, 100, 500, 1000, 2000, 4000)),
    },
    "prw": {
        "tiny": dict(num_train_ids=8, num_test_ids=6, num_train_frames=30, num_test_frames=30,
                     people_per_image=(2, 4), image_size=(240, 320)),
        "demo": dict(num_train_ids=30, num_test_ids=20, num_train_frames=240, num_test_frames=120,
                     people_per_image=(2, 5), image_size=(240, 320), appearances_per_id=(4, 10)),
        "benchmark": dict(num_train_ids=200, num_test_ids=150, num_train_frames=2000, num_test_frames=1500,
                          people_per_image=(2, 6), image_size=(360, 640)),
        "full": dict(num_train_ids=482, num_test_ids=450, num_train_frames=5704, num_test_frames=6112,
                     people_per_image=(2, 5), image_size=(1080, 1920), appearances_per_id=(10, 40)),
    },
    "market1501": {
        "tiny": dict(num_train_ids=6, num_test_ids=5, images_per_id=(3, 6), num_distractors=4, num_junk=3),
        "demo": dict(num_train_ids=30, num_test_ids=30, images_per_id=(4, 10), num_distractors=30, num_junk=20),
        "benchmark": dict(num_train_ids=300, num_test_ids=300, images_per_id=(6, 20), num_distractors=500,
                          num_junk=600),
        "full": dict(num_train_ids=751, num_test_ids=750, images_per_id=(10, 26), num_distractors=2793,
                     num_junk=3819),
    },
}


@dataclass
class GenerationSummary:
    """What a generator wrote."""

    root: str
    format: str
    num_images: int
    num_boxes: int
    num_train_ids: int
    num_test_ids: int
    num_queries: int
    images_written: bool
    seconds: float
    skipped_gallery_sizes: List[int] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------------------------
# Output folder safety and shared helpers
# ---------------------------------------------------------------------------------------------------------------
def check_output_dir(root: str, overwrite: bool = False) -> None:
    """Makes ``root`` ready for a new synthetic dataset without ever deleting data we did not generate.

    Empty or missing: created. Holds a :data:`MARKER_FILE`: the files and folders that marker lists as outputs are
    removed. Otherwise non-empty: ``FileExistsError`` unless ``overwrite`` (then files are written over, nothing
    else is removed).
    """
    os.makedirs(root, exist_ok=True)
    marker = os.path.join(root, MARKER_FILE)
    if os.path.isfile(marker):
        with open(marker) as f:
            try:
                outputs = json.load(f).get("outputs", [])
            except json.JSONDecodeError as e:
                raise FileExistsError(f"{marker} is not a valid synthetic-dataset marker ({e}); "
                                      "remove the folder yourself or choose another output") from e
        for name in outputs:
            path = os.path.join(root, name)
            if os.path.normpath(path).startswith(os.path.normpath(root) + os.sep):
                shutil.rmtree(path) if os.path.isdir(path) else os.path.exists(path) and os.remove(path)
        os.remove(marker)
    elif os.listdir(root) and not overwrite:
        raise FileExistsError(
            f"{root} is not empty and holds no {MARKER_FILE} marker, so it may be a real dataset; refusing to write "
            "into it. Choose an empty folder or pass overwrite=True (--overwrite) to write over existing files.")


def _write_marker(root: str, fmt: str, seed: int, params: dict, outputs: Sequence[str], identities: list,
                  complete: bool) -> None:
    marker = dict(generator=_GENERATOR, format=fmt, seed=seed, params=params, outputs=list(outputs),
                  complete=complete, identities=identities)
    with open(os.path.join(root, MARKER_FILE), "w") as f:
        json.dump(marker, f, indent=1)


def _stream(seed: int, fmt: str, *path: int) -> np.random.Generator:
    """Independent random stream for (seed, dataset format, *path): planning one image never shifts another."""
    return np.random.default_rng([seed, _FORMAT_CODES[fmt], *path])


def _resolve(fmt: str, preset: str, overrides: dict) -> dict:
    if preset not in PRESETS[fmt]:
        raise ValueError(f"unknown {fmt} preset {preset!r}; choose one of {sorted(PRESETS[fmt])}")
    params = dict(PRESETS[fmt][preset])
    params.update({k: v for k, v in overrides.items() if v is not None})
    return params


def _check_range(name: str, value, low: int) -> Tuple[int, int]:
    lo, hi = (int(v) for v in value)
    if not low <= lo <= hi:
        raise ValueError(f"{name} must be a (min, max) pair with {low} <= min <= max, got {value!r}")
    return lo, hi


def _allot(rng: np.random.Generator, num_ids: int, capacity: np.ndarray, counts: Sequence[int],
           what: str) -> List[np.ndarray]:
    """Gives identity i ``counts[i]`` distinct slots among bins with free capacity (weighted by free room).

    Returns per identity the chosen bin indices; ``capacity`` is decremented in place.
    """
    chosen = []
    for i in range(num_ids):
        free = np.flatnonzero(capacity > 0)
        if len(free) < counts[i]:
            raise ValueError(f"not enough room for {what}: identity {i} needs {counts[i]} images but only "
                             f"{len(free)} have a free person slot; use more images, more people_per_image or "
                             "fewer identities/appearances")
        weights = capacity[free].astype(np.float64)
        pick = rng.choice(free, size=counts[i], replace=False, p=weights / weights.sum())
        capacity[pick] -= 1
        chosen.append(pick)
    return chosen


def _render_all(plans: Sequence[ScenePlan], paths: Sequence[str], progress: bool, desc: str) -> None:
    for plan, path in tqdm(list(zip(plans, paths)), desc=desc, disable=not progress, unit="img"):
        if not cv2.imwrite(path, render_scene(plan), _JPEG_PARAMS):
            raise OSError(f"could not write image {path}")


def _identity_records(names: Sequence[str], traits, splits: Sequence[str]) -> list:
    return [dict(name=n, split=s, traits=t.to_dict()) for n, t, s in zip(names, traits, splits)]


# ---------------------------------------------------------------------------------------------------------------
# CUHK-SYSU
# ---------------------------------------------------------------------------------------------------------------
def _idlocate(box) -> np.ndarray:
    """1x4 integer row like the real files: uint8 when every value fits, else uint16 (else int32)."""
    top = max(box)
    dtype = np.uint8 if top <= 255 else np.uint16 if top <= 65535 else np.int32
    return np.asarray([box], dtype=dtype)


def _struct(fields: Sequence[str], rows: Sequence[Sequence]) -> np.ndarray:
    """(1, n) MATLAB struct array: structured ndarray of object fields, one record per row."""
    arr = np.empty((1, len(rows)), dtype=[(f, object) for f in fields])
    for j, row in enumerate(rows):
        for f, value in zip(fields, row):
            arr[0, j][f] = value
    return arr


def _cell(items: Sequence) -> np.ndarray:
    """(n, 1) MATLAB cell array."""
    arr = np.empty((len(items), 1), dtype=object)
    for i, item in enumerate(items):
        arr[i, 0] = item
    return arr


def _scalar(v) -> np.ndarray:
    return np.array([[v]], dtype=np.uint8 if 0 <= v <= 255 else np.float64)


# MAT-file level 5 writing. scipy.io.savemat writes a few thousand struct elements per second, and the real-size
# TestG files hold 22 million gallery entries (hours). This encoder covers exactly what the CUHK-SYSU files use
# (struct and cell arrays, char rows, uint8/uint16/int32/double matrices) and accepts pre-encoded bytes, so the
# entry of a gallery image without the query person is encoded once and reused for every query.
_MI_INT8, _MI_UINT8, _MI_UINT16, _MI_INT32, _MI_UINT32, _MI_DOUBLE, _MI_MATRIX, _MI_UTF8 = 1, 2, 4, 5, 6, 9, 14, 16
_MX_CELL, _MX_STRUCT, _MX_CHAR = 1, 2, 4
_NUMERIC = {np.dtype(np.uint8): (9, _MI_UINT8), np.dtype(np.uint16): (11, _MI_UINT16),
            np.dtype(np.int32): (12, _MI_INT32), np.dtype(np.float64): (6, _MI_DOUBLE)}


def _mat_element(mi_type: int, payload: bytes) -> bytes:
    """Tag + data padded to 8 bytes; data of 1..4 bytes uses the compact 'small data element' form."""
    n = len(payload)
    if 0 < n <= 4:
        return struct.pack("<HH", mi_type, n) + payload.ljust(4, b"\0")
    return struct.pack("<II", mi_type, n) + payload + b"\0" * (-n % 8)


def _mat_matrix_head(mx_class: int, shape: Sequence[int], name: bytes = b"") -> bytes:
    """Array flags, dimensions and name: the sub-elements every miMATRIX starts with."""
    return (_mat_element(_MI_UINT32, struct.pack("<II", mx_class, 0))
            + _mat_element(_MI_INT32, struct.pack(f"<{len(shape)}i", *shape))
            + _mat_element(_MI_INT8, name))


def _mat_matrix(mx_class: int, shape: Sequence[int], body: bytes, name: bytes = b"") -> bytes:
    sub = _mat_matrix_head(mx_class, shape, name) + body
    return struct.pack("<II", _MI_MATRIX, len(sub)) + sub


def _mat_struct_head(fields: Sequence[str], n: int, name: bytes = b"") -> bytes:
    """Everything of a (1, n) struct array's miMATRIX after its tag, up to the elements' field values."""
    width = max(len(f) for f in fields) + 1
    return (_mat_matrix_head(_MX_STRUCT, (1, n), name) + _mat_element(_MI_INT32, struct.pack("<i", width))
            + _mat_element(_MI_INT8, b"".join(f.encode().ljust(width, b"\0") for f in fields)))


def _mat_struct_bytes(fields: Sequence[str], element_bodies: Sequence[bytes], name: bytes = b"") -> bytes:
    """(1, n) struct array from each element's encoded field values (concatenated in field order)."""
    sub = _mat_struct_head(fields, len(element_bodies), name) + b"".join(element_bodies)
    return struct.pack("<II", _MI_MATRIX, len(sub)) + sub


def _mat_encode(value, name: bytes = b"") -> bytes:
    """One MATLAB value as a miMATRIX element (bytes pass through: they are already encoded)."""
    if isinstance(value, bytes):
        return value
    value = np.asarray(value)
    if value.dtype.names:
        if value.shape[0] != 1 and value.ndim == 2:
            raise ValueError(f"struct arrays are written as (1, n), got shape {value.shape}")
        bodies = [b"".join(_mat_encode(el[f]) for f in value.dtype.names) for el in value.ravel(order="F")]
        return _mat_struct_bytes(value.dtype.names, bodies, name)
    if value.dtype == object:
        return _mat_matrix(_MX_CELL, value.shape, b"".join(_mat_encode(v) for v in value.ravel(order="F")), name)
    if value.dtype.kind == "U":
        text = "".join(value.ravel().tolist()).encode("utf-8")
        return _mat_matrix(_MX_CHAR, (1, len(text)), _mat_element(_MI_UTF8, text), name)
    if value.dtype not in _NUMERIC:
        raise TypeError(f"cannot write dtype {value.dtype} to a MAT file (supported: {list(_NUMERIC)})")
    mx_class, mi_type = _NUMERIC[value.dtype]
    shape = value.shape if value.ndim >= 2 else (1, value.size)
    return _mat_matrix(mx_class, shape, _mat_element(mi_type, value.tobytes(order="F")), name)


_MAT_HEADER = (f"MATLAB 5.0 MAT-file, written by {_GENERATOR}".encode().ljust(116, b" ") + b"\0" * 8
               + struct.pack("<H", 0x0100) + b"IM")


def _savemat(path: str, variables: Dict[str, object]) -> None:
    """Writes a MAT-file (level 5, little endian, uncompressed) readable by scipy.io.loadmat and MATLAB."""
    with open(path, "wb") as f:
        f.write(_MAT_HEADER)
        for key, value in variables.items():
            f.write(_mat_encode(value, key.encode()))


def _savemat_struct_stream(path: str, key: str, fields: Sequence[str], n: int, bodies: Iterable[bytes]) -> None:
    """Writes one (1, n) struct variable whose ``n`` encoded elements come from ``bodies`` one at a time, so a
    multi-gigabyte file never sits in memory; the length in the variable's tag is filled in at the end."""
    with open(path, "wb") as f:
        f.write(_MAT_HEADER)
        tag_at = f.tell()
        head = _mat_struct_head(fields, n, key.encode())
        f.write(struct.pack("<II", _MI_MATRIX, 0) + head)
        size, count = len(head), 0
        for body in bodies:
            f.write(body)
            size, count = size + len(body), count + 1
        if count != n:
            raise ValueError(f"{path}: {key} was declared with {n} elements but {count} were written")
        if size >= 2 ** 32:
            raise ValueError(f"{path}: {key} needs {size} bytes, more than a level-5 MAT-file variable can hold")
        f.seek(tag_at + 4)
        f.write(struct.pack("<I", size))


_EMPTY = np.zeros((0, 0))


@dataclass
class _Sighting:
    image: int  # image index
    box: Tuple[int, int, int, int]
    ishard: int


def _plan_cuhk_images(seed, n_images, image_size, people, labeled_per_image, flags):
    """Plans every image: ``labeled_per_image[i]`` lists (identity, traits, request flags) placed with passers-by."""
    h, w = image_size
    plans, sightings = [], {}
    for i in range(n_images):
        rng = _stream(seed, "cuhk_sysu", 0, i)
        total = max(int(people[i]), len(labeled_per_image[i]))
        reqs = [PersonRequest(t, identity=ident, **flags.get((ident, i), {}))
                for ident, t in labeled_per_image[i]]
        reqs += [PersonRequest(sample_traits(rng)) for _ in range(total - len(reqs))]
        placed, occluders, occlusion = place_people(rng, h, w, reqs, height_range=(40, 300))
        plans.append(ScenePlan(h, w, int(rng.integers(2 ** 31)), placed, occluders))
        for person, occ in zip(placed, occlusion):
            hard = int(occ >= 0.5 or person.box[3] < 50)
            sightings.setdefault(i, []).append((person.identity, person.box, hard))
    return plans, sightings


def generate_cuhk_sysu(root: str, *, preset: str = "tiny", num_identities: Optional[int] = None,
                       num_train_images: Optional[int] = None, num_test_images: Optional[int] = None,
                       num_queries: Optional[int] = None, people_per_image: Optional[Tuple[int, int]] = None,
                       appearances_per_id: Optional[Tuple[int, int]] = None,
                       image_size: Optional[Tuple[int, int]] = None, gallery_sizes: Optional[Sequence[int]] = None,
                       seed: int = 0, write_images: bool = True, overwrite: bool = False,
                       progress: bool = False) -> GenerationSummary:
    """Writes a synthetic CUHK-SYSU under ``root`` (``Image/SSM/s<n>.jpg`` and ``annotation/...``).

    Args (``None`` = the preset's value):
        preset: "tiny", "demo", "benchmark" or "full" (see :data:`PRESETS`).
        num_identities: labeled training identities (entries of Train.mat).
        num_train_images / num_test_images: images outside / inside ``pool.mat``.
        num_queries: test identities; each has one query and >= 1 gallery image showing it.
        people_per_image: (min, max) people per image; labeled ones are topped up with unlabeled passers-by.
        appearances_per_id: (min, max) images per identity, min >= 2 (default (2, 4)).
        image_size: (height, width).
        gallery_sizes: TestG<k> files to write; a k larger than ``num_test_images - 1`` is skipped with a note.
        write_images: False writes annotations only (identical to those written with images).
    """
    start = time.time()
    p = _resolve("cuhk_sysu", preset, dict(
        num_identities=num_identities, num_train_images=num_train_images, num_test_images=num_test_images,
        num_queries=num_queries, people_per_image=people_per_image, appearances_per_id=appearances_per_id,
        image_size=image_size, gallery_sizes=gallery_sizes))
    p.setdefault("appearances_per_id", (2, 4))
    n_train_ids, n_test_ids = int(p["num_identities"]), int(p["num_queries"])
    n_train_img, n_test_img = int(p["num_train_images"]), int(p["num_test_images"])
    ppl = _check_range("people_per_image", p["people_per_image"], 1)
    app = _check_range("appearances_per_id", p["appearances_per_id"], 2)
    if n_train_ids < 1 or n_test_ids < 1:
        raise ValueError(f"need >= 1 training identity and >= 1 query, got {n_train_ids} and {n_test_ids}")
    check_output_dir(root, overwrite)
    outputs = ["Image", "annotation"]
    params = {k: list(v) if isinstance(v, tuple) else v for k, v in p.items()}

    rng = _stream(seed, "cuhk_sysu", 1)
    n_ids = n_train_ids + n_test_ids
    traits = sample_identities(rng, n_ids)
    idnames = [f"p{k}" for k in rng.permutation(np.arange(1, n_ids + 1)) + 10000]
    _write_marker(root, "cuhk_sysu", seed, params, outputs,
                  _identity_records(idnames, traits, ["train"] * n_train_ids + ["test"] * n_test_ids), False)

    # Image names s1..sN; a random subset forms the test pool (in random order, like an unsorted pool.mat).
    n_images = n_train_img + n_test_img
    is_test = np.zeros(n_images, bool)
    pool = rng.permutation(n_images)[:n_test_img]
    is_test[pool] = True
    people = rng.integers(ppl[0], ppl[1] + 1, size=n_images)
    capacity = people.copy()

    counts = rng.integers(app[0], app[1] + 1, size=n_ids)
    train_cap = np.where(is_test, 0, capacity)
    test_cap = np.where(is_test, capacity, 0)
    images_of = _allot(rng, n_train_ids, train_cap, counts[:n_train_ids], "training identities")
    images_of += _allot(rng, n_test_ids, test_cap, counts[n_train_ids:], "test identities")
    labeled_per_image: List[list] = [[] for _ in range(n_images)]
    for ident, imgs in enumerate(images_of):
        for i in imgs:
            labeled_per_image[i].append((ident, traits[ident]))

    # Query i = test identity n_train_ids + i, seen in its first chosen image. Flag ~6.4% of queries as occluded
    # and ~10% as low resolution (the real subsets' shares: 187 and 290 of 2,900).
    q_order = rng.permutation(n_test_ids)
    n_occ = max(1, round(n_test_ids * 187 / 2900))
    n_res = max(1, round(n_test_ids * 290 / 2900))
    occ_queries = set(q_order[:n_occ].tolist())
    res_queries = set(q_order[n_occ:n_occ + n_res].tolist()) or set(q_order[:n_res].tolist())
    flags = {}
    for q in range(n_test_ids):
        key = (n_train_ids + q, int(images_of[n_train_ids + q][0]))
        flags[key] = {}
        if q in occ_queries:
            flags[key]["occlude"] = True
        if q in res_queries:
            flags[key]["height_range"] = (40, 60)

    plans, sightings = _plan_cuhk_images(seed, n_images, p["image_size"], people, labeled_per_image, flags)
    names = [f"s{i + 1}.jpg" for i in range(n_images)]
    per_identity: Dict[int, List[_Sighting]] = {k: [] for k in range(n_ids)}
    for i in range(n_images):
        for ident, box, hard in sightings[i]:
            if ident is not None:
                per_identity[ident].append(_Sighting(i, box, hard))
    for ident in range(n_ids):  # keep each identity's sightings in its allotted order (query image first)
        order = {int(img): k for k, img in enumerate(images_of[ident])}
        per_identity[ident].sort(key=lambda s: order[s.image])

    ann = os.path.join(root, "annotation")
    os.makedirs(os.path.join(ann, "test", "train_test"), exist_ok=True)
    os.makedirs(os.path.join(ann, "test", "subset"), exist_ok=True)

    img_rows = [(np.array([names[i]]), _scalar(len(sightings[i])),
                 _struct(("idlocate", "ishard"), [(_idlocate(b), _scalar(hd)) for _, b, hd in sightings[i]]))
                for i in range(n_images)]
    _savemat(os.path.join(ann, "Images.mat"), {"Img": _struct(("imname", "nAppear", "box"), img_rows)})

    def scene(ident):
        return _struct(("imname", "idlocate", "ishard"),
                       [(np.array([names[s.image]]), _idlocate(s.box), _scalar(s.ishard)) for s in per_identity[ident]])

    def person_row(ident):
        return (np.array([idnames[ident]]), _scalar(len(per_identity[ident])), scene(ident))

    person_order = rng.permutation(n_ids)
    _savemat(os.path.join(ann, "Person.mat"),
                     {"Person": _struct(("idname", "nAppear", "scene"), [person_row(k) for k in person_order])})
    _savemat(os.path.join(ann, "pool.mat"), {"pool": _cell([np.array([names[i]]) for i in pool])})
    _savemat(os.path.join(ann, "test", "train_test", "Train.mat"),
                     {"Train": _cell([_struct(("idname", "nAppear", "scene"), [person_row(k)])
                                      for k in range(n_train_ids)])})

    def query_record(q):
        s = per_identity[n_train_ids + q][0]
        return _struct(("imname", "idlocate", "ishard", "idname"),
                       [(np.array([names[s.image]]), _idlocate(s.box), _scalar(s.ishard),
                         np.array([idnames[n_train_ids + q]]))])

    pool_arr = np.asarray(pool)
    empty_pair = _mat_encode(_EMPTY) * 2
    negative_entries: Dict[int, bytes] = {}  # encoded once per pool image, reused by every gallery

    def gallery(q, size, grng) -> bytes:
        """Encoded (1, size) struct: positives first (with boxes), then random pool images without the person
        (empty idlocate and ishard)."""
        sights = per_identity[n_train_ids + q]
        bodies = [_mat_encode(np.array([names[s.image]])) + _mat_encode(_idlocate(s.box)) + _mat_encode(
            _scalar(s.ishard)) for s in sights[1:]][:size]
        negatives = pool_arr[~np.isin(pool_arr, [s.image for s in sights])]
        for i in grng.choice(negatives, size=size - len(bodies), replace=False).tolist():
            if i not in negative_entries:
                negative_entries[i] = _mat_encode(np.array([names[i]])) + empty_pair
            bodies.append(negative_entries[i])
        return _mat_struct_bytes(("imname", "idlocate", "ishard"), bodies)

    skipped = []
    for size in p["gallery_sizes"]:
        size = int(size)
        if size > n_test_img - 1:
            skipped.append(size)
            msg = (f"Skipping TestG{size}.mat: a gallery of {size} needs at least {size + 1} test images, "
                   f"this set has {n_test_img}")
            logger.warning(msg)
            continue
        grng = _stream(seed, "cuhk_sysu", 2, size)
        _savemat_struct_stream(os.path.join(ann, "test", "train_test", f"TestG{size}.mat"), f"TestG{size}",
                               ("Query", "Gallery"), n_test_ids,
                               (_mat_encode(query_record(q)) + gallery(q, size, grng) for q in range(n_test_ids)))

    # Subsets: galleries of 100 (or the whole pool but the query image when smaller), listed in query order.
    sub_size = min(100, n_test_img - 1)
    srng = _stream(seed, "cuhk_sysu", 3)
    occ_rows = [(query_record(q), gallery(q, sub_size, srng), _scalar(1)) for q in sorted(occ_queries)]
    res_rows = [(query_record(q), gallery(q, sub_size, srng)) for q in sorted(res_queries)]
    _savemat(os.path.join(ann, "test", "subset", "Occlusion.mat"),
                     {"Occlusion1": _struct(("Query", "Gallery", "occlusion"), occ_rows)})
    _savemat(os.path.join(ann, "test", "subset", "Resolution.mat"),
                     {"Test_Size": _struct(("Query", "Gallery"), res_rows)})

    if write_images:
        image_dir = os.path.join(root, "Image", "SSM")
        os.makedirs(image_dir, exist_ok=True)
        _render_all(plans, [os.path.join(image_dir, n) for n in names], progress, "CUHK-SYSU images")
    _write_marker(root, "cuhk_sysu", seed, params, outputs,
                  _identity_records(idnames, traits, ["train"] * n_train_ids + ["test"] * n_test_ids), True)
    return GenerationSummary(root, "cuhk_sysu", n_images, sum(len(s) for s in sightings.values()), n_train_ids,
                             n_test_ids, n_test_ids, write_images, time.time() - start, skipped)


# ---------------------------------------------------------------------------------------------------------------
# PRW
# ---------------------------------------------------------------------------------------------------------------
_PRW_CAMERAS = 6


def _prw_frame_names(rng: np.random.Generator, n_frames: int) -> Tuple[List[str], np.ndarray]:
    """Balanced cameras c1..c6, two sequences each, increasing frame numbers: names ``c<cam>s<seq>_<frame:06d>``."""
    cams = np.arange(n_frames) % _PRW_CAMERAS + 1
    names = [""] * n_frames
    for cam in range(1, _PRW_CAMERAS + 1):
        idx = np.flatnonzero(cams == cam)
        frame = 0
        for k, i in enumerate(idx):
            frame += int(rng.integers(25, 200))
            seq = 1 if k < (len(idx) + 1) // 2 else 2
            names[i] = f"c{cam}s{seq}_{frame:06d}"
    return names, cams


def _allot_cross_camera(rng, counts, capacity, cams, what) -> List[np.ndarray]:
    """Like :func:`_allot` but every identity's frames span >= 2 cameras (its first two frames differ in camera)."""
    chosen = []
    for i, count in enumerate(counts):
        free = np.flatnonzero(capacity > 0)
        free_cams = np.unique(cams[free])
        if len(free_cams) < 2 or len(free) < count:
            raise ValueError(f"not enough room for {what}: identity {i} needs {count} frames from >= 2 cameras; "
                             "use more frames, more people_per_image or fewer identities/appearances")
        cam_a, cam_b = rng.choice(free_cams, size=2, replace=False)
        first = [int(rng.choice(free[cams[free] == cam_a])), int(rng.choice(free[cams[free] == cam_b]))]
        rest = np.setdiff1d(free, first)
        weights = capacity[rest].astype(np.float64)
        more = rng.choice(rest, size=count - 2, replace=False, p=weights / weights.sum()) if count > 2 else []
        pick = np.asarray(first + [int(m) for m in more])
        capacity[pick] -= 1
        chosen.append(pick)
    return chosen


def _prw_rows(people: Sequence[PlacedPerson], pid_of: Dict[int, int], rng: np.random.Generator) -> np.ndarray:
    """Annotation rows [pid, x, y, w, h] (float, 4 decimals). Boxes touching the left/top border start slightly
    outside the image, as some real PRW boxes do; other boxes get sub-pixel jitter."""
    rows = []
    for person in people:
        x, y, w, h = (float(v) for v in person.box)
        jx, jy = rng.uniform(-0.45, 0.45, size=2)
        dx = -rng.uniform(0.2, 2.0) if x == 0 else jx
        dy = -rng.uniform(0.2, 2.0) if y == 0 else jy
        pid = -2 if person.identity is None else pid_of[person.identity]
        rows.append([pid, x + dx, y + dy, w - dx + rng.uniform(-0.45, 0.45), h - dy + rng.uniform(-0.45, 0.45)])
    order = rng.permutation(len(rows))
    return np.round(np.asarray(rows, np.float64).reshape(-1, 5)[order], 4)


def generate_prw(root: str, *, preset: str = "tiny", num_train_ids: Optional[int] = None,
                 num_test_ids: Optional[int] = None, num_train_frames: Optional[int] = None,
                 num_test_frames: Optional[int] = None, people_per_image: Optional[Tuple[int, int]] = None,
                 appearances_per_id: Optional[Tuple[int, int]] = None, image_size: Optional[Tuple[int, int]] = None,
                 seed: int = 0, write_images: bool = True, overwrite: bool = False,
                 progress: bool = False) -> GenerationSummary:
    """Writes a synthetic PRW under ``root``: frames/, annotations/, query_box/, query_info.txt and the .mat lists.

    Args (``None`` = the preset's value): ``num_train_ids`` / ``num_test_ids`` labeled identities (raw pids are
    non-contiguous; ``ID_train.mat`` / ``ID_test.mat`` list them), ``num_train_frames`` / ``num_test_frames``,
    ``people_per_image`` (min, max), ``appearances_per_id`` (min >= 2; default (2, 6)), ``image_size`` (h, w).
    Test identities appear in >= 2 cameras; each gets one query per camera it appears in. About one test frame in
    ten also shows a training identity (labeled with its pid), as in the real test set.
    Annotation files use the key ``box_new``, except every 10th frame ``anno_file`` and the next ``anno_previous``.
    With ``write_images=False`` neither frames nor query crops are written.
    """
    start = time.time()
    p = _resolve("prw", preset, dict(num_train_ids=num_train_ids, num_test_ids=num_test_ids,
                                     num_train_frames=num_train_frames, num_test_frames=num_test_frames,
                                     people_per_image=people_per_image, appearances_per_id=appearances_per_id,
                                     image_size=image_size))
    p.setdefault("appearances_per_id", (2, 6))
    n_tr, n_te = int(p["num_train_ids"]), int(p["num_test_ids"])
    f_tr, f_te = int(p["num_train_frames"]), int(p["num_test_frames"])
    ppl = _check_range("people_per_image", p["people_per_image"], 1)
    app = _check_range("appearances_per_id", p["appearances_per_id"], 2)
    if n_tr < 1 or n_te < 1:
        raise ValueError(f"need >= 1 train and >= 1 test identity, got {n_tr} and {n_te}")
    check_output_dir(root, overwrite)
    outputs = ["frames", "annotations", "query_box", "query_info.txt", "frame_train.mat", "frame_test.mat",
               "ID_train.mat", "ID_test.mat"]
    params = {k: list(v) if isinstance(v, tuple) else v for k, v in p.items()}

    rng = _stream(seed, "prw", 1)
    traits = sample_identities(rng, n_tr + n_te)
    all_pids = np.sort(rng.choice(np.arange(1, int((n_tr + n_te) * 1.15) + 3), size=n_tr + n_te, replace=False))
    is_train_pid = np.zeros(len(all_pids), bool)
    is_train_pid[rng.choice(len(all_pids), size=n_tr, replace=False)] = True
    pids = np.concatenate([all_pids[is_train_pid], all_pids[~is_train_pid]])  # identity index -> raw pid
    pid_of = {k: int(v) for k, v in enumerate(pids)}
    _write_marker(root, "prw", seed, params, outputs,
                  _identity_records([str(v) for v in pids], traits, ["train"] * n_tr + ["test"] * n_te), False)

    n_frames = f_tr + f_te
    names, cams = _prw_frame_names(rng, n_frames)
    split = rng.permutation(n_frames)
    train_frames, test_frames = np.sort(split[:f_tr]), np.sort(split[f_tr:])
    is_test = np.zeros(n_frames, bool)
    is_test[test_frames] = True
    people = rng.integers(ppl[0], ppl[1] + 1, size=n_frames)
    counts = rng.integers(app[0], app[1] + 1, size=n_tr + n_te)
    train_cap = np.where(is_test, 0, people)
    test_cap = np.where(is_test, people, 0)
    frames_of = _allot(rng, n_tr, train_cap, counts[:n_tr], "PRW training identities")
    frames_of += _allot_cross_camera(rng, counts[n_tr:], test_cap, cams, "PRW test identities")
    labeled: List[list] = [[] for _ in range(n_frames)]
    for ident, frames in enumerate(frames_of):
        for f in frames:
            labeled[f].append(ident)
    for f in test_frames:  # some test frames also show a training identity
        if test_cap[f] > 0 and rng.random() < 0.1:
            labeled[f].append(int(rng.integers(n_tr)))

    h, w = p["image_size"]
    plans, rows = [], []
    for f in range(n_frames):
        frng = _stream(seed, "prw", 0, f)
        total = max(int(people[f]), len(labeled[f]))
        reqs = [PersonRequest(traits[k], identity=k) for k in labeled[f]]
        reqs += [PersonRequest(sample_traits(frng)) for _ in range(total - len(reqs))]
        if f % 6 == 0:  # regularly put someone at the border: their annotation gets negative coordinates
            reqs[0] = PersonRequest(reqs[0].traits, identity=reqs[0].identity, at_edge=True)
        placed, occluders, _ = place_people(frng, h, w, reqs, height_range=(40, 300))
        plans.append(ScenePlan(h, w, int(frng.integers(2 ** 31)), placed, occluders))
        rows.append(_prw_rows(placed, pid_of, frng))

    os.makedirs(os.path.join(root, "annotations"), exist_ok=True)
    for f in range(n_frames):
        key = "anno_file" if f % 10 == 3 else "anno_previous" if f % 10 == 4 else "box_new"
        scipy.io.savemat(os.path.join(root, "annotations", names[f] + ".jpg.mat"), {key: rows[f]})
    scipy.io.savemat(os.path.join(root, "frame_train.mat"),
                     {"img_index_train": _cell([np.array([names[f]]) for f in train_frames])})
    scipy.io.savemat(os.path.join(root, "frame_test.mat"),
                     {"img_index_test": _cell([np.array([names[f]]) for f in test_frames])})
    scipy.io.savemat(os.path.join(root, "ID_train.mat"), {"ID_train": pids[:n_tr].astype(np.float64)[None, :]})
    scipy.io.savemat(os.path.join(root, "ID_test.mat"), {"ID_test2": pids[n_tr:].astype(np.float64)[None, :]})

    # One query per (test identity, camera): its first frame in that camera; the row is copied from the annotation.
    queries = []
    for ident in range(n_tr, n_tr + n_te):
        pid, seen = pid_of[ident], set()
        for f in frames_of[ident]:
            if cams[f] not in seen:
                seen.add(cams[f])
                row = rows[f][rows[f][:, 0] == pid][0]
                queries.append((pid, int(cams[f]), f, row))
    queries.sort(key=lambda q: (q[0], q[1]))
    with open(os.path.join(root, "query_info.txt"), "w", newline="") as fh:
        for pid, _, f, row in queries:
            fh.write(f"{pid} {row[1]:.4f} {row[2]:.4f} {row[3]:.4f} {row[4]:.4f} {names[f]}\r\n")

    if write_images:
        frame_dir, crop_dir = os.path.join(root, "frames"), os.path.join(root, "query_box")
        os.makedirs(frame_dir, exist_ok=True)
        os.makedirs(crop_dir, exist_ok=True)
        crops_of: Dict[int, list] = {}
        for pid, _, f, row in queries:
            crops_of.setdefault(f, []).append((pid, row))
        for f in tqdm(range(n_frames), desc="PRW frames", disable=not progress, unit="img"):
            img = render_scene(plans[f])
            if not cv2.imwrite(os.path.join(frame_dir, names[f] + ".jpg"), img, _JPEG_PARAMS):
                raise OSError(f"could not write {os.path.join(frame_dir, names[f] + '.jpg')}")
            for pid, row in crops_of.get(f, []):
                x0, y0 = max(int(round(row[1])), 0), max(int(round(row[2])), 0)
                crop = img[y0:int(round(row[2] + row[4])), x0:int(round(row[1] + row[3]))]
                cv2.imwrite(os.path.join(crop_dir, f"{pid}_{names[f]}.jpg"), crop, _JPEG_PARAMS)
    _write_marker(root, "prw", seed, params, outputs,
                  _identity_records([str(v) for v in pids], traits, ["train"] * n_tr + ["test"] * n_te), True)
    return GenerationSummary(root, "prw", n_frames, int(sum(len(r) for r in rows)), n_tr, n_te, len(queries),
                             write_images, time.time() - start)


# ---------------------------------------------------------------------------------------------------------------
# Market-1501 (crops)
# ---------------------------------------------------------------------------------------------------------------
_CROP_H, _CROP_W = 128, 64


def _render_crop(rng: np.random.Generator, traits, shift: float = 0.0) -> np.ndarray:
    """A 128x64 pedestrian crop: background plus a person filling most of the height (DPM-like margins).

    ``shift`` moves the person sideways by that fraction of the crop width (0.6 leaves ~IoU 0.25 with a
    centred box: junk; >= 1 leaves none: distractor).
    """
    img = render_background(rng, _CROP_H, _CROP_W)
    h = int(_CROP_H * rng.uniform(0.8, 0.97))
    w = min(_CROP_W, max(8, int(h * traits.build * 1.15)))
    x = int(np.clip((_CROP_W - w) // 2 + rng.integers(-4, 5), 0, _CROP_W - w)) + int(shift * _CROP_W)
    y = int(rng.integers(0, _CROP_H - h + 1))
    bgr, alpha = render_person(traits, w, h, Appearance.sample(rng))
    x0, x1 = max(x, 0), min(x + w, _CROP_W)
    if x1 > x0:
        a = alpha[:, x0 - x:x1 - x, None]
        img[y:y + h, x0:x1] = img[y:y + h, x0:x1] * (1 - a) + bgr[:, x0 - x:x1 - x] * a
    img += rng.normal(0.0, rng.uniform(1.0, 5.0), size=img.shape).astype(np.float32)
    return np.clip(img, 0, 255).astype(np.uint8)


def generate_market1501(root: str, *, preset: str = "tiny", num_train_ids: Optional[int] = None,
                        num_test_ids: Optional[int] = None, images_per_id: Optional[Tuple[int, int]] = None,
                        num_distractors: Optional[int] = None, num_junk: Optional[int] = None, seed: int = 0,
                        overwrite: bool = False, progress: bool = False) -> GenerationSummary:
    """Writes synthetic Market-1501 crops (128x64) under ``root``/{bounding_box_train, bounding_box_test, query}.

    Names follow ``0001_c1s1_001051_00.jpg`` (4-digit pid, camera 1..6, sequence, 6-digit frame, 2-digit box
    index). Every identity is seen by >= 2 cameras; test identities by >= 2 images per camera, one of which is that
    camera's query (so each query has same-identity gallery images from another camera). ``bounding_box_test`` also
    holds ``num_distractors`` crops with pid 0000 (background or a person mostly outside) and ``num_junk`` crops
    named ``-1_...`` (person half outside).
    """
    start = time.time()
    p = _resolve("market1501", preset, dict(num_train_ids=num_train_ids, num_test_ids=num_test_ids,
                                            images_per_id=images_per_id, num_distractors=num_distractors,
                                            num_junk=num_junk))
    n_tr, n_te = int(p["num_train_ids"]), int(p["num_test_ids"])
    lo, hi = _check_range("images_per_id", p["images_per_id"], 2)
    if n_tr + n_te > 1501 or n_tr < 1 or n_te < 1:
        raise ValueError(f"need 1..1501 identities in total with >= 1 of each split (4-digit pids), "
                         f"got {n_tr} train and {n_te} test")
    check_output_dir(root, overwrite)
    outputs = ["bounding_box_train", "bounding_box_test", "query"]
    params = {k: list(v) if isinstance(v, tuple) else v for k, v in p.items()}
    for d in outputs:
        os.makedirs(os.path.join(root, d), exist_ok=True)

    rng = _stream(seed, "market1501", 1)
    traits = sample_identities(rng, n_tr + n_te)
    pids = rng.choice(np.arange(1, 1502), size=n_tr + n_te, replace=False)
    pids = np.concatenate([np.sort(pids[:n_tr]), np.sort(pids[n_tr:])])
    _write_marker(root, "market1501", seed, params, outputs,
                  _identity_records([f"{v:04d}" for v in pids], traits, ["train"] * n_tr + ["test"] * n_te), False)

    frame_counter = np.zeros(_PRW_CAMERAS + 1, int)

    def name(pid_text: str, cam: int) -> str:
        frame_counter[cam] += int(rng.integers(1, 60))
        seq = 1 + int(frame_counter[cam] // 50000)
        return f"{pid_text}_c{cam}s{seq}_{frame_counter[cam]:06d}_{int(rng.integers(0, 3)):02d}.jpg"

    jobs = []  # (folder, file name, traits or None, shift)
    for ident in range(n_tr + n_te):
        test = ident >= n_tr
        n = int(rng.integers(lo, hi + 1))
        n_cams = int(np.clip(n // 2 if test else n, 2, _PRW_CAMERAS))
        chosen = rng.choice(np.arange(1, _PRW_CAMERAS + 1), size=n_cams, replace=False)
        per_cam = 2 if test else 1
        cam_list = np.concatenate([np.repeat(chosen, per_cam),
                                   rng.choice(chosen, size=max(0, n - per_cam * n_cams))]).astype(int)
        queried = set()
        for cam in cam_list:
            folder = "bounding_box_train" if not test else "bounding_box_test" if cam in queried else "query"
            queried.add(cam)
            jobs.append((folder, name(f"{pids[ident]:04d}", cam), traits[ident], 0.0))
    for _ in range(int(p["num_distractors"])):
        cam = int(rng.integers(1, _PRW_CAMERAS + 1))
        jobs.append(("bounding_box_test", name("0000", cam), sample_traits(rng), float(rng.choice([0.9, 5.0]))))
    for _ in range(int(p["num_junk"])):
        cam = int(rng.integers(1, _PRW_CAMERAS + 1))
        jobs.append(("bounding_box_test", name("-1", cam), sample_traits(rng), float(rng.choice([-0.55, 0.55]))))

    for k, (folder, fname, t, shift) in enumerate(tqdm(jobs, desc="Market-1501 crops", disable=not progress)):
        path = os.path.join(root, folder, fname)
        if not cv2.imwrite(path, _render_crop(_stream(seed, "market1501", 0, k), t, shift), _JPEG_PARAMS):
            raise OSError(f"could not write {path}")
    _write_marker(root, "market1501", seed, params, outputs,
                  _identity_records([f"{v:04d}" for v in pids], traits, ["train"] * n_tr + ["test"] * n_te), True)
    n_queries = sum(1 for j in jobs if j[0] == "query")
    return GenerationSummary(root, "market1501", len(jobs), len(jobs), n_tr, n_te, n_queries, True,
                             time.time() - start)


_GENERATORS = {"cuhk_sysu": generate_cuhk_sysu, "prw": generate_prw, "market1501": generate_market1501}


def generate(fmt: str, root: str, **kwargs) -> GenerationSummary:
    """Dispatches to ``generate_<fmt>`` (fmt in cuhk_sysu, prw, market1501) with the same keyword arguments."""
    if fmt not in _GENERATORS:
        raise ValueError(f"unknown synthetic dataset format {fmt!r}; choose one of {sorted(_GENERATORS)}")
    return _GENERATORS[fmt](root, **kwargs)
