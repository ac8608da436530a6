"""Search a gallery index for a person given by a box in an image: ranked hits, results.json and results.jpg."""
import json
import logging
import math
import os

import cv2
import numpy as np
import torch
from detectron2.utils.visualizer import Visualizer

from person_search.precision import inference_autocast

from .index import GalleryIndex, build_search_model, json_object, load_search_config, model_identity, require_own_folder
from person_search.data import read_image_file

from .sources import UNREADABLE_IMAGE_ERRORS, SearchError, read_video_frames, shorten

__all__ = ["parse_box", "check_box", "embed_query", "search_person", "draw_results"]

logger = logging.getLogger(__name__)

# Smallest query box side in pixels: a thinner box has no image content to embed (and after the test-time resize
# and float32 rounding it can become empty, which detectron2 then drops).
MIN_BOX_SIZE = 1
# Size (height, width) of each picture of the results grid, how many pictures per row, and how many hits it shows
# at most (results.json lists them all; 100 hits make a 6,000-pixel-high picture, JPEG stops at 65,535).
TILE_SIZE = (240, 320)
TILES_PER_ROW = 4
MAX_DRAWN_HITS = 100


def parse_box(text):
    """``"x1,y1,x2,y2"`` -> [x1, y1, x2, y2] floats."""
    parts = text.split(",")
    try:
        box = [float(p) for p in parts]
    except ValueError:
        box = []
    if len(box) != 4:
        raise SearchError(f"query box {text!r} is malformed: expected four numbers x1,y1,x2,y2")
    return box


def check_box(box, width, height, image_path):
    """Raise unless ``box`` is four finite numbers inside a ``width`` x ``height`` image, at least
    :data:`MIN_BOX_SIZE` pixels wide and high."""
    try:
        values = [float(v) for v in box]
    except (TypeError, ValueError):
        values = []
    if len(values) != 4 or not all(math.isfinite(v) for v in values):
        raise SearchError(f"query box {box!r} is malformed: expected four finite numbers x1, y1, x2, y2")
    x1, y1, x2, y2 = values
    if x2 - x1 < MIN_BOX_SIZE or y2 - y1 < MIN_BOX_SIZE:
        raise SearchError(
            f"query box {values} is empty or smaller than {MIN_BOX_SIZE} pixel: expected x2 - x1 >= {MIN_BOX_SIZE} "
            f"and y2 - y1 >= {MIN_BOX_SIZE}"
        )
    if x1 < 0 or y1 < 0 or x2 > width or y2 > height:
        raise SearchError(f"query box {values} is not inside image {image_path} of size {width}x{height} (w x h)")
    return values


def _read_image(path, image_format):
    try:
        return read_image_file(path, image_format)
    except UNREADABLE_IMAGE_ERRORS as e:
        raise SearchError(f"cannot read query image {path}: {e}") from e


def _query_image(path, frame, image_format):
    """The query picture: the image file ``path``, or frame ``frame`` of the video ``path``."""
    if frame is None:
        return _read_image(path, image_format)
    if frame < 0:
        raise SearchError(f"query frame must be >= 0, got {frame}")
    if not os.path.isfile(path):
        raise SearchError(f"query video {path} does not exist")
    image = read_video_frames(path, [frame], image_format).get(frame)
    if image is None:
        raise SearchError(f"query video {path} has no frame {frame}")
    return image


@torch.no_grad()
def embed_query(model, cfg, image_path, box, *, frame=None):
    """The (D,) embedding of ``box`` (x1, y1, x2, y2, original coordinates) in ``image_path`` (with ``frame``:
    in that frame of the video ``image_path``).

    Uses the evaluation's query path: :class:`PersonSearchDatasetMapper` (test-time resize, the box as
    ``given_instances``) and ``model.inference(..., detected_instances=...)``.
    """
    from person_search.data import ImageTooThinError, PersonSearchDatasetMapper

    image = _query_image(image_path, frame, cfg.INPUT.FORMAT)
    height, width = image.shape[:2]
    box = check_box(box, width, height, image_path)
    record = {"file_name": image_path, "image_id": os.path.basename(image_path), "height": height, "width": width}
    mapper = PersonSearchDatasetMapper(cfg, is_train=False)
    try:
        inputs = mapper.map_image(dict(record, query_box=box), image)
    except ImageTooThinError as e:
        raise SearchError(f"query image {image_path} of {width}x{height} pixels is too thin for the test-time "
                          "resize") from e
    given = inputs["given_instances"].to(model.device)
    with inference_autocast(cfg):
        (output,) = model.inference([inputs], detected_instances=[given])
    return output["instances"].pred_embeddings[0].float().cpu().numpy()


def _query_model(index, cfg, weights, force):
    """The model for querying ``index``: its recorded config and weights unless overridden, identity checked."""
    recorded = index.manifest["model"]
    if cfg is None:
        cfg = load_search_config(index.config_file)
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        # the device is not part of the model identity: an index built on a GPU can be queried on a CPU
        logger.warning(f"the query config asks for {cfg.MODEL.DEVICE}; no GPU here, querying on the CPU")
        cfg = cfg.clone()  # the caller's config stays as it was
        cfg.defrost()
        cfg.MODEL.DEVICE = "cpu"
        cfg.freeze()
    seed = recorded["random_seed"] if recorded["random_seed"] is not None else 0
    if weights is None:
        weights = recorded["weights"]
    identity = model_identity(cfg, weights, seed=seed)
    if identity["identity"] != recorded["identity"]:
        message = (
            f"the query model differs from the one index {index.root} was built with (config hash "
            f"{identity['config_sha256'][:12]} vs {recorded['config_sha256'][:12]}, weights "
            f"{identity['weights_sha256'] or 'random'} vs {recorded['weights_sha256'] or 'random'}): "
            "its embeddings are not comparable"
        )
        if not force:
            raise SearchError(message + "; use the index's config and weights, or force the search")
        logger.warning(message + "; searching anyway (forced)")
        if cfg.MODEL.REID.EMBED_DIM != index.embeddings.shape[1]:  # no search possible: say so before the build
            raise SearchError(
                f"the query model gives {cfg.MODEL.REID.EMBED_DIM}-d embeddings (MODEL.REID.EMBED_DIM), index "
                f"{index.root} holds {index.embeddings.shape[1]}-d ones: not even a forced search can compare them"
            )
    # random weights are allowed here only as the ones the index was built with (or when forced)
    model, _ = build_search_model(cfg, weights, allow_random_weights=True, seed=seed)
    return model, cfg


def search_person(
    index_dir_or_index,
    image_path,
    box,
    *,
    topk=10,
    out_dir=None,
    cfg=None,
    weights=None,
    force=False,
    backend="auto",
    frame=None,
):
    """Rank the indexed persons by similarity to the person in ``box`` of ``image_path``.

    Args:
        index_dir_or_index: an index directory or a loaded :class:`GalleryIndex`.
        box: [x1, y1, x2, y2] in the image's pixel coordinates.
        frame: if given, ``image_path`` is a video and the person is in this frame (0-based) of it.
        out_dir: if given, write ``results.json`` and ``results.jpg`` (query crop + top hits) there.
        cfg, weights: the query model; default: the config and weights recorded in the index. A model that
            differs from the index's is refused unless ``force``.
        backend: the search backend of :meth:`GalleryIndex.search`.

    Returns:
        dict with ``query`` (image, frame, box, index), ``hits`` (rank, score, image, path, box, det_score, frame,
        time, best first) and, with ``out_dir``, ``files`` (paths of the JSON and the picture).
    """
    index = index_dir_or_index
    if not isinstance(index, GalleryIndex):
        index = GalleryIndex.load(index)
    index.check_searchable(topk)  # before the (slow) model build
    image_path = os.path.abspath(image_path)
    # check the query before the (slow) model build
    image = _query_image(image_path, frame, "BGR")
    box = check_box(box, image.shape[1], image.shape[0], image_path)
    files = _result_files(os.path.abspath(out_dir)) if out_dir is not None else None

    model, cfg = _query_model(index, cfg, weights, force)
    embedding = embed_query(model, cfg, image_path, box, frame=frame)
    scores, indices = index.search(embedding, topk, backend=backend)
    hits = [_hit(index, rank, float(score), int(i)) for rank, (score, i) in enumerate(zip(scores[0], indices[0]), 1)]
    query = {"image": image_path, "frame": frame, "box": box, "index": os.path.abspath(index.root)}
    result = {"query": query, "hits": hits}
    if files is not None:
        result["files"] = _write_results(result, image, files)
    return result


def _hit(index, rank, score, box_idx):
    record = index.image_record(int(index.image_index[box_idx]))
    return {
        "rank": rank,
        "score": score,
        "image": record["file"],
        "path": record["path"],
        "frame": record["frame"],
        "time": record["time"],
        "box": [float(v) for v in index.boxes[box_idx]],
        "det_score": float(index.scores[box_idx]),
    }


def _result_files(out_dir):
    """Paths of results.json and results.jpg in ``out_dir``, after checking that writing them loses nothing and
    adds nothing to a folder of the user's (a gallery, an index): ``out_dir`` must be new, empty, or hold the
    results.json of an earlier query, whose files are then replaced."""
    files = {"json": os.path.join(out_dir, "results.json"), "picture": os.path.join(out_dir, "results.jpg")}

    def is_results(path):
        earlier = json_object(os.path.join(path, "results.json"))
        return earlier is not None and {"query", "hits"} <= set(earlier)

    require_own_folder(out_dir, "query output", is_results, "results.json of an earlier query")
    return files


def _write_results(result, query_image, files):
    os.makedirs(os.path.dirname(files["json"]), exist_ok=True)
    with open(files["json"], "w") as f:
        json.dump(dict(result, files=files), f, indent=2)
    drawn = result["hits"][:MAX_DRAWN_HITS]
    if len(drawn) < len(result["hits"]):
        logger.info(f"{files['picture']} shows the first {len(drawn)} of {len(result['hits'])} hits")
    picture = draw_results(query_image, result["query"]["box"], drawn, _hit_images(drawn))
    if not cv2.imwrite(files["picture"], picture):
        raise SearchError(f"cannot write {files['picture']} (results.json is written)")
    return files


def _hit_images(hits):
    """The gallery picture of each hit (BGR), None where it cannot be read any more (logged)."""
    frames = {}
    for video in {h["image"] for h in hits if h["frame"] is not None}:
        wanted = [h["frame"] for h in hits if h["image"] == video]
        frames[video] = read_video_frames(video, wanted) if os.path.isfile(video) else {}
    images, missing = [], []
    for hit in hits:
        if hit["frame"] is not None:
            image = frames[hit["image"]].get(hit["frame"])
        else:
            image = _gallery_picture(hit["image"])
        if image is None:
            missing.append(hit["image"] if hit["frame"] is None else f"{hit['image']}@{hit['frame']}")
        images.append(image)
    if missing:
        missing = sorted(set(missing))
        logger.warning(f"{len(missing)} gallery pictures of the hits cannot be read (moved?): {shorten(missing)}")
    return images


def _gallery_picture(path):
    """A gallery image as it was indexed (BGR), None if it cannot be read any more."""
    try:
        return read_image_file(path, "BGR")
    except UNREADABLE_IMAGE_ERRORS:
        return None


def draw_results(query_image, query_box, hits, hit_images):
    """A grid of pictures: the query crop, then each hit's gallery image with its box, rank and score.

    Args:
        query_image: the query image (BGR); query_box: [x1, y1, x2, y2] in it.
        hits: hit dicts of :func:`search_person`; hit_images: their BGR images (None: drawn as a gray tile).

    Returns:
        the BGR picture.
    """
    # the whole pixels the box touches (never empty for a box of check_box inside the image)
    x1, y1 = (int(math.floor(v)) for v in query_box[:2])
    x2, y2 = (int(math.ceil(v)) for v in query_box[2:])
    crop = query_image[y1 : max(y2, y1 + 1), x1 : max(x2, x1 + 1)]
    tiles = [_tile(crop, None, "query", (255, 128, 0))]
    for hit, image in zip(hits, hit_images):
        label = f"#{hit['rank']} {hit['score']:.3f}" + (f" f{hit['frame']}" if hit["frame"] is not None else "")
        tiles.append(_tile(image, hit["box"], label, (0, 200, 0)))
    columns = min(len(tiles), TILES_PER_ROW)
    rows = -(-len(tiles) // columns)
    blank = np.full_like(tiles[0], 255)
    tiles += [blank] * (rows * columns - len(tiles))
    return np.vstack([np.hstack(tiles[r * columns : (r + 1) * columns]) for r in range(rows)])


def _tile(image, box, label, color):
    """``image`` (BGR) letterboxed into a TILE_SIZE cell; ``box`` (original coordinates) and the caption ``label``
    drawn by detectron2's Visualizer in ``color`` (BGR)."""
    height, width = TILE_SIZE
    tile = np.full((height, width, 3), 127, np.uint8)
    scale, top, left = 1.0, 0, 0
    if image is not None:
        scale = min(height / image.shape[0], width / image.shape[1])
        size = (max(1, int(image.shape[1] * scale)), max(1, int(image.shape[0] * scale)))
        resized = cv2.resize(image, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
        top, left = (height - size[1]) // 2, (width - size[0]) // 2
        tile[top : top + size[1], left : left + size[0]] = resized
    else:
        label += " (missing)"
    rgb = tuple(c / 255 for c in color[::-1])
    visualizer = Visualizer(tile[:, :, ::-1])
    if image is not None and box is not None:
        x1, y1, x2, y2 = box
        visualizer.draw_box((left + x1 * scale, top + y1 * scale, left + x2 * scale, top + y2 * scale), edge_color=rgb)
    visualizer.draw_text(label, (4, 2), color=rgb, horizontal_alignment="left", font_size=11)
    return visualizer.get_output().get_image()[:, :, ::-1]
