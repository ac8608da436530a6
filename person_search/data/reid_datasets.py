"""Crop re-identification datasets: Market-1501, DukeMTMC-reID, CUHK03 (new and classic protocols), registration.

Every record is one pedestrian crop::

    {"file_name": absolute path, "image_id": file name, "height": int, "width": int,
     "person_id": int, "camera_id": int (0-based), "reid_split": "train" | "query" | "gallery"}

``person_id`` is relabelled to 0..N-1 (sorted raw ids) in the train split and kept raw in query and gallery.
Market-1501 junk crops (pid -1) are dropped everywhere; distractors (pid 0) stay in the gallery only.
``reid_split`` lets :class:`person_search.evaluation.ReIDEvaluator` tell query from gallery records even when a
crop belongs to both. Formats and counts: ``DATASETS_AND_EVAL.md`` section 4 and datasets/README.md.
"""
import functools
import logging
import os
import re

import numpy as np
from detectron2.data import MetadataCatalog
from scipy.io import loadmat

from .catalog import register_dataset
from .mat_utils import LAYOUT_HINT, image_size, mat_strings, require_path

__all__ = [
    "SPLITS",
    "load_market1501",
    "load_dukemtmc",
    "load_cuhk03",
    "load_cuhk03_classic",
    "extract_cuhk03_images",
    "register_reid_splits",
    "register_reid_datasets",
]

logger = logging.getLogger(__name__)

SPLITS = ("train", "query", "gallery")
EVALUATOR_TYPE = "reid"
JUNK_PID = -1
DISTRACTOR_PID = 0
# Every Market-1501 crop is stored at 128x64 (height x width): the loader takes this instead of reading ~32k
# image headers (~3 s); the mapper's detectron2 size check still names any file of another size.
MARKET1501_CROP_SIZE = (128, 64)
# Folders of the Market-1501 style releases, per split.
_MARKET_STYLE_FOLDERS = {"train": "bounding_box_train", "query": "query", "gallery": "bounding_box_test"}
# "0001_c1s1_001051_00.jpg" (Market-1501), "0005_c2_f0046985.jpg" (DukeMTMC-reID), "-1_c3s2_..." (junk).
_MARKET_STYLE_NAME = re.compile(r"^(-1|\d+)_c(\d)")
# CUHK03 images extracted from cuhk-03.mat: "{camera pair}_{pid:03d}_{view}_{image:02d}.png", all 1-based.
_CUHK03_NAME = re.compile(r"^(\d+)_(\d+)_([12])_(\d+)\.png$")
CUHK03_SUBSETS = ("labeled", "detected")
_CUHK03_SPLIT_FIELDS = {"train": "train_idx", "query": "query_idx", "gallery": "gallery_idx"}
# The classic protocol's 20 random test sets ("testsets" in cuhk-03.mat) of 100 identities each.
CUHK03_CLASSIC_SPLITS = 20
# Classic-protocol person ids: camera pair * 1000 + pid within the pair (pairs hold at most 843 identities).
_CUHK03_PAIR_STRIDE = 1000


def _check_split(split, dataset):
    if split not in SPLITS:
        raise ValueError(f"{dataset}: unknown split {split!r}, expected one of {SPLITS}")


def _relabel(records):
    """Train split: raw person ids -> 0..N-1 in sorted raw-id order (in place)."""
    raw = sorted({r["person_id"] for r in records})
    index = {pid: i for i, pid in enumerate(raw)}
    for r in records:
        r["person_id"] = index[r["person_id"]]
    return records


def _drop_distractors(records, split, where):
    """Distractors (pid 0) are negatives of the gallery; they are no identity to train on or to search for."""
    if split == "gallery":
        return records
    kept = [r for r in records if r["person_id"] != DISTRACTOR_PID]
    if len(kept) != len(records):
        logger.warning(f"{where}: dropped {len(records) - len(kept)} distractor crops (pid 0) from the {split} split")
    return kept


@functools.lru_cache(maxsize=None)
def _load_market_style(dataset_root, split, dataset, fixed_size):
    """Records of a Market-1501 style folder (cached: the evaluator and the loader ask for them again)."""
    folder = require_path(os.path.join(dataset_root, _MARKET_STYLE_FOLDERS[split]), f"{dataset} {split} folder")
    names = sorted(n for n in os.listdir(folder) if n.lower().endswith(".jpg"))  # releases also hold Thumbs.db
    records, junk = [], 0
    for name in names:
        match = _MARKET_STYLE_NAME.match(name)
        if match is None:
            raise ValueError(
                f"{os.path.join(folder, name)}: expected a {dataset} crop name '<pid>_c<camera>...jpg' "
                "(e.g. 0001_c1s1_001051_00.jpg)"
            )
        pid, camera = int(match.group(1)), int(match.group(2))
        if pid == JUNK_PID:
            junk += 1
            continue
        if pid < 0 or camera < 1:
            raise ValueError(f"{os.path.join(folder, name)}: pid {pid} / camera {camera} out of range")
        file_name = os.path.join(folder, name)
        height, width = fixed_size if fixed_size is not None else image_size(file_name)
        records.append(
            {"file_name": file_name, "image_id": name, "height": height, "width": width,
             "person_id": pid, "camera_id": camera - 1, "reid_split": split}
        )
    if junk:
        logger.info(f"{folder}: dropped {junk} junk crops (pid -1)")
    records = _drop_distractors(records, split, folder)
    if not records:
        raise ValueError(f"{folder}: no {dataset} crops found (expected files like 0001_c1s1_001051_00.jpg)")
    return tuple(_relabel(records) if split == "train" else records)


def _copy(records):
    # Records hold only immutable values: a shallow copy per dict keeps the cached tuple intact.
    return [dict(r) for r in records]


def load_market1501(root, split):
    """Market-1501 records of ``split`` ("train", "query", "gallery") from the ``Market-1501-v15.09.15`` folder.

    Train: 12,936 crops / 751 ids (relabelled 0..750); query: 3,368; gallery: 15,913 (19,732 files minus 3,819
    junk). Crop sizes are Market-1501's fixed 128x64 (no header is read).
    """
    _check_split(split, "Market-1501")
    return _copy(_load_market_style(os.path.abspath(root), split, "Market-1501", MARKET1501_CROP_SIZE))


def load_dukemtmc(root, split):
    """DukeMTMC-reID records of ``split`` from the ``DukeMTMC-reID`` folder (crop sizes from the file headers).

    Train: 16,522 crops / 702 ids (relabelled 0..701); query: 2,228; gallery: 17,661.
    """
    _check_split(split, "DukeMTMC-reID")
    return _copy(_load_market_style(os.path.abspath(root), split, "DukeMTMC-reID", None))


def _cuhk03_image_dir(root, subset):
    """``images_<subset>`` under ``root``, or FileNotFoundError saying how to make it."""
    image_dir = os.path.join(root, f"images_{subset}")
    if os.path.isdir(image_dir):
        return image_dir
    mat = os.path.join(root, "cuhk-03.mat")
    if os.path.exists(mat):
        raise FileNotFoundError(
            f"CUHK03 images not found: {image_dir}. Extract them from {mat} with "
            f"person_search.data.extract_cuhk03_images({root!r}) (needs h5py); see datasets/README.md"
        )
    raise FileNotFoundError(f"CUHK03 {subset} images folder not found: {image_dir} ({LAYOUT_HINT})")


def _mat_vector(protocol, key, path):
    if key not in protocol:
        found = sorted(k for k in protocol if not k.startswith("__"))
        raise ValueError(f"{path}: expected MATLAB variable {key!r}, found {found}")
    return np.asarray(protocol[key]).reshape(-1)


@functools.lru_cache(maxsize=None)
def _load_cuhk03(root, split, subset):
    path = os.path.join(root, f"cuhk03_new_protocol_config_{subset}.mat")
    require_path(path, f"CUHK03 new-protocol file ({subset})")
    try:
        protocol = loadmat(path)
    except Exception as e:  # scipy raises ValueError, TypeError, OSError ... for damaged files
        raise ValueError(f"{path}: cannot read the CUHK03 new-protocol file ({type(e).__name__}: {e})") from e
    filelist = mat_strings(_mat_vector(protocol, "filelist", path), f"{path}: filelist")
    labels = _mat_vector(protocol, "labels", path).astype(np.int64)
    if labels.size != len(filelist):
        raise ValueError(f"{path}: {labels.size} labels for {len(filelist)} filelist entries")
    field = _CUHK03_SPLIT_FIELDS[split]
    indices = _mat_vector(protocol, field, path).astype(np.int64)
    if indices.size and (indices.min() < 1 or indices.max() > len(filelist)):
        raise ValueError(
            f"{path}: {field} must hold 1-based indices into filelist (1..{len(filelist)}), "
            f"got values in [{indices.min()}, {indices.max()}]"
        )
    image_dir = _cuhk03_image_dir(root, subset)
    records = []
    for index in indices - 1:
        name = filelist[index]
        match = _CUHK03_NAME.match(name)
        if match is None:
            raise ValueError(
                f"{path}: filelist entry {index + 1} is {name!r}, expected '<pair>_<pid>_<view>_<image>.png'"
            )
        file_name = os.path.join(image_dir, name)
        height, width = image_size(file_name)
        records.append(
            {"file_name": file_name, "image_id": name, "height": height, "width": width,
             "person_id": int(labels[index]), "camera_id": int(match.group(3)) - 1, "reid_split": split}
        )
    if not records:
        raise ValueError(f"{path}: {field} is empty")
    return tuple(_relabel(records) if split == "train" else records)


def load_cuhk03(root, split, *, subset="labeled"):
    """CUHK03 new-protocol (CUHK03-NP) records from the ``cuhk03_release`` folder.

    Reads ``cuhk03_new_protocol_config_<subset>.mat`` (``filelist``, ``labels``, 1-based ``train_idx`` /
    ``query_idx`` / ``gallery_idx``) with the crops in ``images_<subset>/``; ``camera_id`` = view - 1 from the
    file name. Labeled: 7,368 / 1,400 / 5,328 crops (train / query / gallery), 767 train ids relabelled 0..766.
    """
    _check_split(split, "CUHK03")
    if subset not in CUHK03_SUBSETS:
        raise ValueError(f"CUHK03: unknown subset {subset!r}, expected one of {CUHK03_SUBSETS}")
    return _copy(_load_cuhk03(os.path.abspath(root), split, subset))


def _import_h5py(purpose):
    try:
        import h5py
    except ImportError as e:
        raise ImportError(f"{purpose} reads the MATLAB v7.3 cuhk-03.mat with h5py: pip install h5py") from e
    return h5py


@functools.lru_cache(maxsize=None)
def _cuhk03_classic_testsets(root):
    """The classic test sets of ``<root>/cuhk-03.mat``: a tuple of frozensets of (camera pair, pid), 1-based."""
    h5py = _import_h5py("the CUHK03 classic protocol")
    path = require_path(os.path.join(root, "cuhk-03.mat"), "CUHK03 release file")
    with h5py.File(path, "r") as mat:
        if "testsets" not in mat:
            raise ValueError(f"{path}: expected the dataset 'testsets', found {sorted(mat.keys())}")
        testsets = []
        for k, ref in enumerate(np.asarray(mat["testsets"]).reshape(-1), start=1):
            table = np.asarray(mat[ref])  # MATLAB N x 2 [camera pair, pid], stored transposed: (2, N)
            if table.ndim != 2 or table.shape[0] != 2:
                raise ValueError(
                    f"{path}: testsets{{{k}}} has MATLAB shape {table.shape[::-1]}, expected N x 2 [camera pair, pid]"
                )
            testsets.append(frozenset((int(pair), int(pid)) for pair, pid in table.T))
    return tuple(testsets)


@functools.lru_cache(maxsize=None)
def _load_cuhk03_classic(root, split, subset, split_index):
    testsets = _cuhk03_classic_testsets(root)
    if not 0 <= split_index < len(testsets):
        raise ValueError(
            f"CUHK03 classic: split_index {split_index} out of range, cuhk-03.mat holds {len(testsets)} test sets"
        )
    test_ids = testsets[split_index]
    image_dir = _cuhk03_image_dir(root, subset)
    records, found = [], set()
    for name in sorted(n for n in os.listdir(image_dir) if n.endswith(".png")):
        match = _CUHK03_NAME.match(name)
        if match is None:
            raise ValueError(
                f"{os.path.join(image_dir, name)}: expected a CUHK03 crop name '<pair>_<pid>_<view>_<image>.png'"
            )
        pair, pid, view = int(match.group(1)), int(match.group(2)), int(match.group(3))
        if ((pair, pid) in test_ids) == (split == "train"):
            continue
        found.add((pair, pid))
        file_name = os.path.join(image_dir, name)
        height, width = image_size(file_name)
        records.append(
            {"file_name": file_name, "image_id": name, "height": height, "width": width,
             "person_id": pair * _CUHK03_PAIR_STRIDE + pid, "camera_id": view - 1, "reid_split": split}
        )
    if split != "train" and found != test_ids:
        logger.warning(
            f"CUHK03 classic split {split_index}: {len(test_ids - found)} of its {len(test_ids)} test identities "
            f"have no crops in {image_dir}"
        )
    if not records:
        raise ValueError(f"{image_dir}: no CUHK03 {split} crops for classic split {split_index}")
    return tuple(_relabel(records) if split == "train" else records)


def load_cuhk03_classic(root, split, *, subset="labeled", split_index=0):
    """CUHK03 classic-protocol records from the ``cuhk03_release`` folder.

    Test identities: test set ``split_index`` (0-based; cell ``split_index + 1`` of ``testsets`` in
    ``cuhk-03.mat``, 100 (camera pair, pid) rows each, read with h5py); train: every other identity (1,367,
    relabelled 0..N-1). Query and gallery are the same crops, all crops of the test identities: the CUHK03 metric
    removes each query's same-identity same-camera crops (itself included) and scores the CMC with one random
    gallery crop per identity (``ReIDEvaluator(cuhk03_single_gallery_shot=True)``, which the registered
    ``cuhk03_classic*`` galleries request). Crops come from ``images_<subset>/`` (``extract_cuhk03_images``);
    ``person_id`` = camera pair * 1000 + pid, ``camera_id`` = view - 1.
    """
    _check_split(split, "CUHK03 classic")
    if subset not in CUHK03_SUBSETS:
        raise ValueError(f"CUHK03: unknown subset {subset!r}, expected one of {CUHK03_SUBSETS}")
    return _copy(_load_cuhk03_classic(os.path.abspath(root), split, subset, split_index))


def extract_cuhk03_images(root, subsets=CUHK03_SUBSETS):
    """Write the crops of ``<root>/cuhk-03.mat`` (MATLAB v7.3) to ``<root>/images_<subset>/`` as PNG files.

    Names are ``{camera pair}_{pid:03d}_{view}_{image:02d}.png`` (1-based; images 1-5 are view 1, 6-10 view 2),
    the names the new-protocol files list. Empty cells are skipped. Needs h5py (``pip install h5py``).

    Returns:
        dict: subset -> number of images written.
    """
    h5py = _import_h5py("extract_cuhk03_images")
    import cv2

    path = require_path(os.path.join(root, "cuhk-03.mat"), "CUHK03 release file")
    written = {}
    with h5py.File(path, "r") as mat:
        for subset in subsets:
            if subset not in mat:
                raise ValueError(f"{path}: expected the dataset {subset!r}, found {sorted(mat.keys())}")
            out_dir = os.path.join(root, f"images_{subset}")
            os.makedirs(out_dir, exist_ok=True)
            written[subset] = 0
            for pair, pair_ref in enumerate(np.asarray(mat[subset]).reshape(-1), start=1):
                cells = np.asarray(mat[pair_ref])  # HDF5 stores the MATLAB M x 10 cell transposed: (10, M)
                for (image, pid), ref in np.ndenumerate(cells):
                    pixels = np.asarray(mat[ref])
                    if pixels.ndim != 3:  # an empty cell
                        continue
                    rgb = pixels.transpose(2, 1, 0)  # (3, W, H) -> (H, W, 3)
                    view = 1 if image < 5 else 2
                    name = f"{pair}_{pid + 1:03d}_{view}_{image + 1:02d}.png"
                    if not cv2.imwrite(os.path.join(out_dir, name), np.ascontiguousarray(rgb[:, :, ::-1])):
                        raise OSError(f"could not write {os.path.join(out_dir, name)}")
                    written[subset] += 1
            logger.info(f"{path}: wrote {written[subset]} {subset} crops to {out_dir}")
    return written


def _load_train(name, load_split):
    """Load a train split and record its number of identities (classes) in the metadata."""
    records = load_split("train")
    MetadataCatalog.get(name).set(num_classes=len({r["person_id"] for r in records}))
    return records


def register_reid_splits(prefix, dataset_root, loader, *, cuhk03_single_gallery_shot=False, **loader_kwargs):
    """Register ``<prefix>_{train,query,gallery}`` loaded by ``loader(dataset_root, split, **loader_kwargs)``.

    Metadata: ``evaluator_type = "reid"``, ``dataset_root``; the query and gallery sets name each other
    (``gallery_dataset`` / ``query_dataset``); the train set gets ``num_classes`` when first loaded; the gallery
    set's ``cuhk03_single_gallery_shot`` asks the evaluator for the classic CUHK03 CMC.
    """
    def load_split(split):
        return loader(dataset_root, split, **loader_kwargs)

    names = {split: f"{prefix}_{split}" for split in SPLITS}
    common = {"evaluator_type": EVALUATOR_TYPE, "dataset_root": dataset_root}
    register_dataset(names["train"], functools.partial(_load_train, names["train"], load_split), **common)
    register_dataset(names["query"], functools.partial(load_split, "query"), gallery_dataset=names["gallery"], **common)
    register_dataset(
        names["gallery"], functools.partial(load_split, "gallery"), query_dataset=names["query"],
        cuhk03_single_gallery_shot=cuhk03_single_gallery_shot, **common,
    )


def register_reid_datasets(root=None):
    """Register market1501_*, dukemtmc_*, cuhk03_* (labeled), cuhk03_detected_* and the classic protocol's
    cuhk03_classic_split{0..19}_* (labeled) and cuhk03_classic_detected_split{0..19}_* under ``root``.

    ``root`` defaults to ``$DETECTRON2_DATASETS`` or ``datasets``. Nothing is read from disk here. Importing
    ``person_search`` calls this with the default root; calling it again re-registers the same names.
    """
    if root is None:
        root = os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets"))
    register_reid_splits("market1501", os.path.join(root, "Market-1501-v15.09.15"), load_market1501)
    register_reid_splits("dukemtmc", os.path.join(root, "DukeMTMC-reID"), load_dukemtmc)
    cuhk03_root = os.path.join(root, "cuhk03_release")
    register_reid_splits("cuhk03", cuhk03_root, load_cuhk03, subset="labeled")
    register_reid_splits("cuhk03_detected", cuhk03_root, load_cuhk03, subset="detected")
    for k in range(CUHK03_CLASSIC_SPLITS):
        for prefix, subset in (("cuhk03_classic", "labeled"), ("cuhk03_classic_detected", "detected")):
            register_reid_splits(
                f"{prefix}_split{k}", cuhk03_root, load_cuhk03_classic,
                cuhk03_single_gallery_shot=True, subset=subset, split_index=k,
            )
