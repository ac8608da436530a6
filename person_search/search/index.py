"""Gallery indexing: detect and embed every person of a folder of images or a video, store it, search it.

Layout of an index directory::

    manifest.json     format version, gallery images, model identity, counts (written last: marks completion)
    config.yaml       the full config the index was built with (the query rebuilds the model from it)
    embeddings.npy    (N, D) float32, L2-normalised identity embeddings of the N detected persons
    boxes.npy         (N, 4) float32 x1, y1, x2, y2 in original image coordinates
    scores.npy        (N,) float32 detection scores
    image_index.npy   (N,) int32 index into manifest["images"]
    shards/, progress.json   partial results while building (removed once consolidated)

Nothing is pickled: arrays are ``.npy`` / ``.npz`` read with ``allow_pickle=False``, the rest is JSON / YAML.
"""
import datetime
import hashlib
import json
import logging
import os
import pickle
import shutil

import numpy as np
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.modeling import build_model
from detectron2.utils.file_io import PathManager
from tqdm import tqdm

from person_search.data import ImageTooThinError, PersonSearchDatasetMapper
from person_search.evaluation import check_score_threshold
from person_search.modeling.memory_format import apply_memory_format
from person_search.precision import inference_autocast

from .sources import SearchError, open_gallery_source, shorten

__all__ = [
    "FORMAT_VERSION",
    "FAISS_MIN_BOXES",
    "GalleryIndex",
    "build_index",
    "build_search_model",
    "load_search_config",
    "model_identity",
    "remove_index",
]

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
# Images per shard of partial results: an interrupted run loses at most this many images of work.
SHARD_SIZE = 256
# "auto" search uses FAISS from this many indexed boxes on. numpy (a matrix product and a partial partition) was
# faster at every measured size (benchmarks/index_speed.py, 2 CPU cores: 10k to 1M boxes); the threshold past them
# is a judgement, not a measurement (FAISS then avoids numpy's per-query similarity rows of every box).
FAISS_MIN_BOXES = 2_000_000
# The numpy search computes the similarities of this many (query, box) pairs at a time at most: 256 MiB of float32,
# twice that at the peak (the partition works on a copy).
_NUMPY_SIMILARITIES_PER_CHUNK = 1 << 26
_ARRAYS = ("embeddings", "boxes", "scores", "image_index")


def load_search_config(config_file, opts=()):
    """A frozen person-search config: detectron2 defaults + plugin keys + ``config_file`` + ``opts``."""
    from person_search import add_person_search_config

    if not os.path.isfile(config_file):
        raise FileNotFoundError(f"config file {config_file} does not exist")
    cfg = get_cfg()
    add_person_search_config(cfg)
    # yacs raises KeyError / AssertionError / ValueError for unknown keys, odd-length or mistyped overrides
    try:
        cfg.merge_from_file(config_file)
    except (KeyError, AssertionError, ValueError, TypeError) as e:
        raise SearchError(f"config file {config_file}: {type(e).__name__}: {e}") from e
    try:
        cfg.merge_from_list(list(opts))
    except (KeyError, AssertionError, ValueError, TypeError) as e:
        raise SearchError(f"config overrides {list(opts)}: {type(e).__name__}: {e}") from e
    cfg.freeze()
    return cfg


def _sha256_file(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _local_weights(weights):
    """Local path of a weights file or URL (detectron2:// and http(s):// are fetched by detectron2's PathManager)."""
    local = PathManager.get_local_path(weights) if "://" in weights else weights
    if not os.path.isfile(local):
        raise FileNotFoundError(f"weights file {weights} does not exist")
    return local


# (MODEL sub-node, key, default) of the model keys added after indexes were first built
_KEYS_HASHED_WHEN_CHANGED = (("REID", "EMBED_DETECTIONS_FROM", "boxes"),)


def model_identity(cfg, weights, *, seed=0):
    """What determines the embeddings: the model and input config, and the weights.

    Only ``MODEL`` and ``INPUT`` are hashed (without ``MODEL.WEIGHTS``, ``MODEL.DEVICE`` and
    ``MODEL.CHANNELS_LAST``): solver, dataset and evaluation keys do not change an embedding, and an index built on
    a GPU (channels-last or not) may be queried on a CPU.

    Args:
        weights: a weights file or URL, or "" for a randomly initialised model (identified by ``seed``).

    Returns:
        dict with ``identity`` (one hash of all of it), ``config_sha256``, ``weights`` (absolute path, URL or ""),
        ``weights_sha256`` (None when random) and ``random_seed`` (None unless random).
    """
    model_cfg = cfg.clone()
    model_cfg.defrost()
    model_cfg.MODEL.WEIGHTS = ""
    model_cfg.MODEL.DEVICE = ""
    model_cfg.MODEL.pop("CHANNELS_LAST", None)  # a speed setting (identities from before it was added hold)
    # Keys added after the first indexes were built count only when set away from their defaults, so that an index
    # built before a key existed keeps its identity.
    for node, key, default in _KEYS_HASHED_WHEN_CHANGED:
        if model_cfg.MODEL[node].get(key) == default:
            model_cfg.MODEL[node].pop(key)
    # canonical JSON, not cfg.dump(): YAML anchors for shared lists differ between a config and its reloaded dump
    canonical = json.dumps({"MODEL": model_cfg.MODEL, "INPUT": model_cfg.INPUT}, sort_keys=True)
    config_sha = hashlib.sha256(canonical.encode()).hexdigest()
    if weights:
        weights_sha = _sha256_file(_local_weights(weights))
        weights_id = f"sha256:{weights_sha}"
        weights = weights if "://" in weights else os.path.abspath(weights)
        seed = None
    else:
        weights_sha = None
        weights_id = f"random:seed={seed}"
    identity = hashlib.sha256(f"{config_sha}\n{weights_id}".encode()).hexdigest()
    return {
        "identity": identity,
        "config_sha256": config_sha,
        "weights": weights,
        "weights_sha256": weights_sha,
        "random_seed": seed,
    }


def build_search_model(cfg, weights, *, allow_random_weights=False, seed=0):
    """Build the model of ``cfg`` in eval mode with ``weights`` loaded by DetectionCheckpointer.

    ``weights`` "" gives a randomly initialised model (from ``seed``, reproducibly), only with
    ``allow_random_weights`` (tests and demos); otherwise a missing weights file is an error.

    Returns:
        (model, identity) where identity is :func:`model_identity`'s dict.
    """
    if not weights and not allow_random_weights:
        raise SearchError("no weights file given; pass --weights (random weights need --allow-random-weights)")
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        raise SearchError(
            f"MODEL.DEVICE is {cfg.MODEL.DEVICE!r} but torch finds no CUDA device here: run on the CPU with "
            "--opts MODEL.DEVICE cpu"
        )
    identity = model_identity(cfg, weights, seed=seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = apply_memory_format(build_model(cfg), cfg)
    if weights:
        local = _local_weights(weights)
        try:
            DetectionCheckpointer(model).load(local)
        except (pickle.UnpicklingError, KeyError, ValueError, RuntimeError, EOFError) as e:
            raise SearchError(f"cannot load weights file {weights} ({type(e).__name__}: {e})") from e
    else:
        logger.warning(f"Using a randomly initialised model (seed {seed}): its embeddings are meaningless")
    return model.eval(), identity


class _Detector:
    """Batched detection + embedding with the test-time resize and inference precision of the config."""

    def __init__(self, model, cfg, score_thresh):
        self.model = model
        self.mapper = PersonSearchDatasetMapper(cfg, is_train=False)  # the evaluation's test-time resize
        self.score_thresh = score_thresh
        self.cfg = cfg

    def prepare(self, item):
        """The model input of a gallery item's picture, None for a picture too thin for the test-time resize."""
        height, width = item.image.shape[:2]
        try:
            return self.mapper.map_image({"file_name": item.path, "height": height, "width": width}, item.image)
        except ImageTooThinError:
            return None

    @torch.no_grad()
    def __call__(self, inputs):
        """Per input of :meth:`prepare`, a dict of numpy arrays ``embeddings``, ``boxes``, ``scores`` of the kept
        detections."""
        with inference_autocast(self.cfg):
            outputs = self.model(inputs)
        results = []
        for output in outputs:
            instances = output["instances"].to("cpu")
            keep = instances.scores >= self.score_thresh
            results.append(
                {
                    "embeddings": instances.pred_embeddings[keep].float().numpy(),
                    "boxes": instances.pred_boxes.tensor[keep].float().numpy(),
                    "scores": instances.scores[keep].float().numpy(),
                }
            )
        return results


class _ShardWriter:
    """Accumulates detections of consecutive gallery items and writes them as one shard + a progress entry."""

    def __init__(self, output_dir, build_key, shards, embed_dim):
        self.output_dir = output_dir
        self.build_key = build_key
        self.shards = shards  # progress entries of the shards written so far
        self.embed_dim = embed_dim
        self._reset()

    def _reset(self):
        self.images, self.skipped, self.parts = [], [], []

    @property
    def next_position(self):
        return self.shards[-1]["next_position"] if self.shards else 0

    def add(self, item, detections):
        detections = dict(detections, image_index=np.full(len(detections["scores"]), len(self.images), np.int32))
        self.parts.append(detections)
        self.images.append(item.record())

    def skip(self, item):
        self.skipped.append(item.path)

    def write_progress(self):
        """Record the shards written so far in progress.json (it also marks the folder as a partial index)."""
        progress = {"format_version": FORMAT_VERSION, "build_key": self.build_key, "shards": self.shards}
        _atomic_write_json(os.path.join(self.output_dir, "progress.json"), progress)

    def flush(self, next_position):
        """Write the accumulated items (source positions up to ``next_position``) as a shard."""
        if next_position == self.next_position:
            return
        name = os.path.join("shards", f"{len(self.shards):06d}.npz")
        arrays = _concatenate(self.parts, self.embed_dim)
        # the shard's image records ride along as a JSON string (a 0-d unicode array needs no pickle)
        arrays["records"] = np.array(json.dumps({"images": self.images, "skipped": self.skipped}))
        _atomic_write(os.path.join(self.output_dir, name), lambda f: np.savez(f, **arrays))
        self.shards.append({"file": name, "next_position": next_position})
        self.write_progress()
        self._reset()


def _concatenate(parts, embed_dim):
    empty = {
        "embeddings": np.zeros((0, embed_dim), np.float32),
        "boxes": np.zeros((0, 4), np.float32),
        "scores": np.zeros((0,), np.float32),
        "image_index": np.zeros((0,), np.int32),
    }
    return {k: np.concatenate([empty[k]] + [p[k] for p in parts]).astype(empty[k].dtype) for k in _ARRAYS}


def _atomic_write(path, write):
    """Write through ``write(file)`` into a temporary file renamed over ``path``: readers never see half a file."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        write(f)
    os.replace(tmp, path)


def _atomic_write_json(path, obj):
    _atomic_write(path, lambda f: f.write(json.dumps(obj, indent=1).encode()))


def _read_json(path):
    """The JSON object of an index file that exists; a SearchError if it is damaged."""
    value = json_object(path)
    if value is None:
        raise SearchError(f"{path} is damaged (not a JSON object)")
    return value


def json_object(path):
    """The JSON object (dict) stored in ``path``; None if the file is missing, unreadable or holds no object."""
    try:
        with open(path) as f:
            value = json.load(f)
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def require_directory(path, what):
    """Raise unless ``path`` is a directory or does not exist yet."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise SearchError(f"{what} {path} is a file, expected a directory")


def require_own_folder(path, what, is_ours, expected):
    """Raise unless ``path`` is new, an empty folder, or a folder ``is_ours(path)`` recognises as written by the
    command (which then writes, replaces or deletes files there): nothing of the user's is lost or added to.
    ``expected`` says in words what such a folder holds."""
    require_directory(path, what)
    if os.path.isdir(path) and os.listdir(path) and not is_ours(path):
        raise SearchError(
            f"{what} {path} is not empty and holds no {expected}: use a new or empty directory (nothing in it was "
            "changed)"
        )


def remove_index(index_dir, *, keep_folder=False):
    """Delete the files of a (finished or partial) index written by :func:`build_index`, and the folder if
    that leaves it empty (unless ``keep_folder``). Other files are kept; a folder without an index is refused."""
    _check_output_dir(index_dir)
    if not os.path.isdir(index_dir):
        return
    names = ("manifest.json", "progress.json", "config.yaml", *(f"{a}.npy" for a in _ARRAYS))
    for name in names + tuple(n + ".tmp" for n in names):  # .tmp: left by an interrupted _atomic_write
        path = os.path.join(index_dir, name)
        if os.path.isfile(path):
            os.remove(path)
    shutil.rmtree(os.path.join(index_dir, "shards"), ignore_errors=True)
    if not keep_folder and not os.listdir(index_dir):
        os.rmdir(index_dir)


def _check_output_dir(output_dir):
    """Refuse an output path that is a file, or a non-empty folder that ``build_index`` did not write (its
    manifest.json or progress.json records a build key): indexing writes and deletes files there."""

    def is_index(path):
        records = (json_object(os.path.join(path, f)) for f in ("manifest.json", "progress.json"))
        return any(r is not None and "build_key" in r for r in records)

    require_own_folder(output_dir, "index output", is_index,
                       "index (no manifest.json or progress.json written by `person-search index`)")


def _load_progress(output_dir, build_key):
    """Progress entries of an earlier run with the same arguments, [] for a fresh start."""
    path = os.path.join(output_dir, "progress.json")
    if not os.path.isfile(path):
        return []
    progress = _read_json(path)
    if progress.get("build_key") != build_key:
        raise SearchError(
            f"{output_dir} holds a partial index built with other arguments (gallery, model, score threshold, "
            f"batch size, precision or memory format differ, see {path}); resume with the same arguments, or use "
            "another output directory"
        )
    shards = progress["shards"]
    start = shards[-1]["next_position"] if shards else 0
    logger.info(f"Resuming: {len(shards)} shards done, continuing from gallery item {start}")
    return shards


def build_index(
    cfg,
    weights,
    gallery,
    output_dir,
    *,
    batch_size=4,
    video_every=1,
    score_thresh=None,
    allow_random_weights=False,
    seed=0,
    shard_size=SHARD_SIZE,
    config_path=None,
):
    """Detect and embed every person of ``gallery`` and store them in ``output_dir``; resumable.

    Args:
        cfg: a person-search config (see :func:`load_search_config`).
        weights: model weights file (or URL); "" = random weights, only with ``allow_random_weights``.
        gallery: a folder of images (recursive) or a video file.
        output_dir: the index directory. If it holds a partial run with the same arguments, that run resumes;
            if it holds a finished index with the same arguments, that index is returned.
        batch_size: images per forward pass.
        video_every: for a video, index every ``video_every``-th frame.
        score_thresh: keep detections scoring at least this (default ``cfg.TEST.PERSON_SEARCH.DET_THRESH``).
        seed: the seed of random weights.
        shard_size: gallery items per shard of partial results.
        config_path: the config file ``cfg`` came from, recorded in the manifest.

    Returns:
        the :class:`GalleryIndex`.
    """
    if batch_size < 1 or shard_size < 1:
        raise SearchError(f"batch size and shard size must be >= 1, got {batch_size} and {shard_size}")
    score_thresh = cfg.TEST.PERSON_SEARCH.DET_THRESH if score_thresh is None else float(score_thresh)
    if not 0.0 <= score_thresh <= 1.0:
        raise SearchError(f"the index's score threshold must be within [0, 1] (a detection score), got {score_thresh}")
    try:
        check_score_threshold(cfg, score_thresh, "the index's score threshold")
    except ValueError as e:
        raise SearchError(str(e)) from e
    _check_output_dir(output_dir)  # before the slow model build
    source = open_gallery_source(gallery, video_every=video_every, image_format=cfg.INPUT.FORMAT)
    model, identity = build_search_model(cfg, weights, allow_random_weights=allow_random_weights, seed=seed)
    build_key = hashlib.sha256(
        json.dumps(
            [FORMAT_VERSION, source.describe(), identity["identity"], score_thresh, batch_size, shard_size,
             cfg.TEST.AMP_DTYPE]  # the precision changes embeddings slightly: never mix it within one index
            + (["channels_last"] if cfg.MODEL.CHANNELS_LAST else [])  # so does the memory format, by rounding
        ).encode()
    ).hexdigest()
    folder_existed = os.path.isdir(output_dir)
    os.makedirs(output_dir, exist_ok=True)
    manifest_path = os.path.join(output_dir, "manifest.json")
    if os.path.isfile(manifest_path):
        manifest = _read_json(manifest_path)
        if manifest.get("build_key") != build_key:
            differs = _what_differs(manifest, source, identity, score_thresh, cfg)
            raise SearchError(
                f"{output_dir} already holds an index built with other arguments ({differs}); use another output "
                "directory"
            )
        logger.info(f"{output_dir} already holds this index")
        return GalleryIndex.load(output_dir)

    writer = _ShardWriter(output_dir, build_key, _load_progress(output_dir, build_key), cfg.MODEL.REID.EMBED_DIM)
    writer.write_progress()
    try:
        _run(source, _Detector(model, cfg, score_thresh), writer, batch_size, shard_size)
    except SearchError:
        if not writer.shards:  # bad input before any result: leave no partial index behind
            remove_index(output_dir, keep_folder=folder_existed)
        raise
    with open(os.path.join(output_dir, "config.yaml"), "w") as f:
        f.write(cfg.dump())

    manifest = {
        "format_version": FORMAT_VERSION,
        "build_key": build_key,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "gallery": source.describe(),
        "model": dict(identity, config_file="config.yaml", config_path=config_path),
        "embed_dim": cfg.MODEL.REID.EMBED_DIM,
        "score_thresh": score_thresh,
        "precision": cfg.TEST.AMP_DTYPE or "fp32",
    }
    return _consolidate(output_dir, writer.shards, manifest)


def _what_differs(manifest, source, identity, score_thresh, cfg):
    """Which of the recorded build arguments of an index differ from the current ones, in words."""
    differences = []
    if manifest.get("gallery") != source.describe():
        differences.append(
            "the gallery: pictures were added, removed or changed, or the video changed (or the index comes from "
            "an earlier person_search, which identified a gallery by its file names only)"
        )
    if manifest.get("model", {}).get("identity") != identity["identity"]:
        differences.append("the model's config or weights")
    if manifest.get("score_thresh") != score_thresh:
        differences.append(f"the score threshold ({manifest.get('score_thresh')} then)")
    if manifest.get("precision") != (cfg.TEST.AMP_DTYPE or "fp32"):
        differences.append(f"the precision ({manifest.get('precision')} then)")
    return "; ".join(differences) or "batch size, shard size or memory format"


def _run(source, detector, writer, batch_size, shard_size):
    """Feed the not yet indexed gallery items through the detector in batches, flushing full shards."""
    start = writer.next_position
    batch = []  # (item, model input)

    def run_batch():
        for (item, _), detections in zip(batch, detector([inputs for _, inputs in batch])):
            writer.add(item, detections)
        batch.clear()

    position = start
    for item in tqdm(source.iter_items(start), initial=start, total=len(source), desc="indexing", unit="img"):
        position = item.position + 1
        inputs = None if item.image is None else detector.prepare(item)
        if inputs is None:
            if item.image is not None:
                height, width = item.image.shape[:2]
                logger.warning(f"Skipping {item.path}: {width}x{height} pixels is too thin for the test-time resize")
            writer.skip(item)
        else:
            batch.append((item, inputs))
            if len(batch) == batch_size:
                run_batch()
        # A shard ends on a batch boundary, so a resumed run forms the same batches as an uninterrupted one.
        if not batch and position - writer.next_position >= shard_size:
            writer.flush(position)
    if batch:
        run_batch()
    if position == 0:
        raise SearchError(f"gallery {source.describe()['path']} yields no images (a video without decodable frames?)")
    writer.flush(position)


def _consolidate(output_dir, shards, manifest):
    """Merge the shards into the final arrays, write the manifest, remove the partial results."""
    images, skipped, parts = [], [], []
    for shard in shards:
        with np.load(os.path.join(output_dir, shard["file"]), allow_pickle=False) as data:
            part = {k: data[k] for k in _ARRAYS}
            records = json.loads(str(data["records"]))
        part["image_index"] = part["image_index"] + len(images)
        parts.append(part)
        images.extend(records["images"])
        skipped.extend(records["skipped"])
    arrays = _concatenate(parts, manifest["embed_dim"])
    if skipped:
        logger.warning(
            f"Skipped {len(skipped)} unreadable or too thin gallery images (listed in manifest.json): "
            f"{shorten(skipped)}"
        )
    for name, array in arrays.items():
        _atomic_write(os.path.join(output_dir, f"{name}.npy"), lambda f, a=array: np.save(f, a, allow_pickle=False))
    manifest.update(
        images=images,
        skipped=skipped,
        counts={"images": len(images), "skipped": len(skipped), "boxes": len(arrays["scores"])},
    )
    _atomic_write_json(os.path.join(output_dir, "manifest.json"), manifest)
    shutil.rmtree(os.path.join(output_dir, "shards"), ignore_errors=True)
    os.remove(os.path.join(output_dir, "progress.json"))
    logger.info(f"Indexed {len(arrays['scores'])} persons in {len(images)} images into {output_dir}")
    return GalleryIndex(output_dir, manifest, **arrays)


def _top_k(similarities, k):
    """Column indices of the ``k`` largest values of each row, largest first, ties in index order: the first ``k``
    of a stable sort of the whole row, without sorting it (a partial partition finds the k-th largest value)."""
    num_rows, num_columns = similarities.shape
    if k == num_columns:
        return np.argsort(-similarities, axis=1, kind="stable")
    kth_largest = np.partition(similarities, num_columns - k, axis=1)[:, num_columns - k]
    top = np.empty((num_rows, k), np.int64)
    for i, (row, threshold) in enumerate(zip(similarities, kth_largest)):
        candidates = np.flatnonzero(row >= threshold)  # at least k, in index order (more if the k-th value ties)
        top[i] = candidates[np.argsort(-row[candidates], kind="stable")[:k]]
    return top


class GalleryIndex:
    """The detected persons of a gallery: embeddings, boxes, scores, their images, exact inner-product search."""

    def __init__(self, root, manifest, embeddings, boxes, scores, image_index):
        self.root = root
        self.manifest = manifest
        self.embeddings = embeddings
        self.boxes = boxes
        self.scores = scores
        self.image_index = image_index
        self._faiss_index = None

    @classmethod
    def load(cls, index_dir):
        """Load an index directory written by :func:`build_index`."""
        manifest_path = os.path.join(index_dir, "manifest.json")
        if not os.path.isfile(manifest_path):
            raise FileNotFoundError(f"{manifest_path} does not exist: {index_dir} is not a (finished) gallery index")
        manifest = _read_json(manifest_path)
        if manifest.get("format_version") != FORMAT_VERSION:
            raise SearchError(
                f"{manifest_path} has index format version {manifest.get('format_version')}, expected {FORMAT_VERSION}"
            )
        arrays = {k: np.load(os.path.join(index_dir, f"{k}.npy"), allow_pickle=False) for k in _ARRAYS}
        n = len(arrays["scores"])
        if arrays["embeddings"].shape != (n, manifest["embed_dim"]) or any(len(a) != n for a in arrays.values()):
            raise SearchError(f"arrays of index {index_dir} disagree in length or embedding size: {manifest_path}")
        return cls(index_dir, manifest, **arrays)

    def __len__(self):
        return len(self.scores)

    @property
    def config_file(self):
        return os.path.join(self.root, self.manifest["model"]["config_file"])

    def image_record(self, image_idx):
        """The manifest record of an image (``path``, ``frame``, ``time``) with ``file``: its absolute path."""
        record = dict(self.manifest["images"][image_idx])
        gallery = self.manifest["gallery"]
        is_folder = gallery["kind"] == "folder"
        record["file"] = os.path.join(gallery["path"], record["path"]) if is_folder else gallery["path"]
        return record

    def search(self, query_embeddings, topk, backend="auto"):
        """The ``topk`` indexed persons most similar (inner product) to each query, best first.

        Args:
            query_embeddings: (Q, D) or (D,) L2-normalised embeddings.
            backend: "numpy" (matrix products and a partial partition), "faiss" (exact IndexFlatIP) or "auto"
                (faiss from :data:`FAISS_MIN_BOXES` boxes on). Both are exact and give the same ranking.

        Returns:
            (scores, indices): (Q, k) float32 similarities and int64 box indices, k = min(topk, len(self)).
        """
        queries = np.ascontiguousarray(np.atleast_2d(query_embeddings), dtype=np.float32)
        if queries.ndim != 2 or queries.shape[1] != self.embeddings.shape[1]:
            raise SearchError(
                f"query embeddings have shape {np.shape(query_embeddings)}: expected (Q, {self.embeddings.shape[1]}) "
                f"or ({self.embeddings.shape[1]},) for index {self.root}"
            )
        if not np.isfinite(queries).all():
            raise SearchError("query embeddings contain NaN or infinite values")
        if backend not in ("auto", "numpy", "faiss"):
            raise SearchError(f"unknown search backend {backend!r}; expected auto, numpy or faiss")
        self.check_searchable(topk)
        k = min(int(topk), len(self))
        if backend == "faiss" or (backend == "auto" and len(self) >= FAISS_MIN_BOXES):
            scores, indices = self._faiss().search(queries, k)
            return scores, indices.astype(np.int64)
        rows_per_chunk = max(1, _NUMPY_SIMILARITIES_PER_CHUNK // len(self))
        scores, indices = [], []
        for start in range(0, len(queries), rows_per_chunk):
            similarities = queries[start : start + rows_per_chunk] @ self.embeddings.T
            top = _top_k(similarities, k)
            scores.append(np.take_along_axis(similarities, top, axis=1))
            indices.append(top)
        return np.concatenate(scores), np.concatenate(indices)

    def check_searchable(self, topk):
        """Raise unless the index holds persons and ``topk`` is a number of hits (an integer >= 1)."""
        if len(self) == 0:
            raise SearchError(f"index {self.root} holds no detected persons: nothing to search")
        if not isinstance(topk, (int, np.integer)) or isinstance(topk, bool) or topk < 1:
            raise SearchError(f"topk must be an integer >= 1, got {topk!r}")

    def _faiss(self):
        if self._faiss_index is None:
            import faiss

            self._faiss_index = faiss.IndexFlatIP(self.embeddings.shape[1])
            self._faiss_index.add(np.ascontiguousarray(self.embeddings, dtype=np.float32))
        return self._faiss_index
