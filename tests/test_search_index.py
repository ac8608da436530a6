"""Gallery indexing with a tiny random CPU model: storage round trip, resume, unreadable images, video, search."""
import json
import logging
import os

import cv2
import numpy as np
import pytest

from person_search.search import GalleryIndex, SearchError, build_index, load_search_config, model_identity, remove_index
from person_search.search import index as index_module
from person_search.search.sources import VideoSource, read_video_frames

from conftest import TINY_CONFIG, tiny_cfg

# A random model keeps every detection with a zero threshold; small inputs and few proposals keep it fast.
FAST_OPTS = (
    "MODEL.ROI_HEADS.SCORE_THRESH_TEST", 0.0,
    "MODEL.RPN.POST_NMS_TOPK_TEST", 4,
    "TEST.DETECTIONS_PER_IMAGE", 3,
    "INPUT.MIN_SIZE_TEST", 64,
    "INPUT.MAX_SIZE_TEST", 96,
)  # fmt: skip
BUILD_ARGS = dict(batch_size=2, shard_size=2, score_thresh=0.0, allow_random_weights=True)


def write_image(path, seed, size=(96, 128)):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    image = np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)
    assert cv2.imwrite(str(path), image)


@pytest.fixture(scope="module")
def gallery(tmp_path_factory):
    """Sorted items: a.jpg, b.png, sub/broken.jpg (not an image), sub/c.jpg, sub/d.jpg; notes.txt is ignored."""
    root = tmp_path_factory.mktemp("gallery")
    for seed, name in enumerate(["a.jpg", "b.png", "sub/c.jpg", "sub/d.jpg"]):
        write_image(root / name, seed, size=(96, 128) if seed != 1 else (80, 140))
    (root / "sub" / "broken.jpg").write_bytes(b"this is not a jpeg")
    (root / "notes.txt").write_text("not part of the gallery")
    return str(root)


@pytest.fixture(scope="module")
def built(gallery, tmp_path_factory):
    """An uninterrupted build of the gallery (two shards: {a, b} and {broken, c, d})."""
    out = str(tmp_path_factory.mktemp("index"))
    return build_index(tiny_cfg(*FAST_OPTS), "", gallery, out, **BUILD_ARGS)


def test_index_round_trip(built, gallery):
    loaded = GalleryIndex.load(built.root)
    n = len(loaded)
    assert n > 0 and len(built) == n
    assert loaded.embeddings.shape == (n, 32) and loaded.embeddings.dtype == np.float32
    assert loaded.boxes.shape == (n, 4) and loaded.boxes.dtype == np.float32
    assert loaded.scores.shape == (n,) and loaded.image_index.dtype == np.int32
    np.testing.assert_allclose(np.linalg.norm(loaded.embeddings, axis=1), 1.0, atol=1e-5)
    for name in ("embeddings", "boxes", "scores", "image_index"):
        np.testing.assert_array_equal(getattr(loaded, name), getattr(built, name))

    manifest = loaded.manifest
    expected_paths = ["a.jpg", "b.png", os.path.join("sub", "c.jpg"), os.path.join("sub", "d.jpg")]
    assert [r["path"] for r in manifest["images"]] == expected_paths
    assert all(r["frame"] is None and r["time"] is None for r in manifest["images"])
    assert manifest["skipped"] == [os.path.join("sub", "broken.jpg")]
    assert manifest["counts"] == {"images": 4, "skipped": 1, "boxes": n}
    assert manifest["gallery"]["kind"] == "folder" and manifest["gallery"]["path"] == gallery
    assert manifest["embed_dim"] == 32 and manifest["score_thresh"] == 0.0
    assert manifest["model"]["weights"] == "" and manifest["model"]["random_seed"] == 0
    # every image got detections; boxes lie inside their (original size) image
    assert set(loaded.image_index.tolist()) == {0, 1, 2, 3}
    for box, image_idx in zip(loaded.boxes, loaded.image_index):
        record = loaded.image_record(int(image_idx))
        assert record["file"] == os.path.join(gallery, record["path"])
        height, width = cv2.imread(record["file"]).shape[:2]
        assert 0 <= box[0] <= box[2] <= width and 0 <= box[1] <= box[3] <= height
    # the partial results are gone, the config is kept for queries
    assert sorted(os.listdir(loaded.root)) == sorted(
        ["boxes.npy", "config.yaml", "embeddings.npy", "image_index.npy", "manifest.json", "scores.npy"]
    )


def test_score_threshold_below_the_models_is_refused(gallery, tmp_path):
    with pytest.raises(SearchError, match="below MODEL.ROI_HEADS.SCORE_THRESH_TEST"):
        build_index(tiny_cfg(), "", gallery, str(tmp_path), **dict(BUILD_ARGS, score_thresh=0.2))
    assert not os.listdir(tmp_path)  # refused before anything was written


def test_bf16_index_has_fp32_unit_embeddings(built, gallery, tmp_path):
    bf16 = build_index(tiny_cfg(*FAST_OPTS, "TEST.AMP_DTYPE", "bf16"), "", gallery, str(tmp_path), **BUILD_ARGS)
    assert bf16.embeddings.dtype == np.float32 and bf16.boxes.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(bf16.embeddings, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(np.bincount(bf16.image_index), np.bincount(built.image_index))
    # Closeness to fp32 is checked on given boxes (test_roi_heads.py) and through evaluation (test_train_net.py):
    # a random model's box regression turns bf16 rounding into box shifts of a few pixels.
    # the precision is a TEST key: the same model, so fp32 queries may search a bf16-built index
    assert bf16.manifest["model"]["identity"] == built.manifest["model"]["identity"]
    assert bf16.manifest["precision"] == "bf16" and built.manifest["precision"] == "fp32"
    # ... but one index never mixes precisions: the fp32 index's folder refuses a bf16 run
    with pytest.raises(SearchError, match="built with other arguments"):
        build_index(tiny_cfg(*FAST_OPTS, "TEST.AMP_DTYPE", "bf16"), "", gallery, built.root, **BUILD_ARGS)


def test_channels_last_index_matches_and_keeps_the_model_identity(built, gallery, tmp_path):
    cfg = tiny_cfg(*FAST_OPTS, "MODEL.CHANNELS_LAST", True)
    channels_last = build_index(cfg, "", gallery, str(tmp_path), **BUILD_ARGS)
    np.testing.assert_array_equal(channels_last.image_index, built.image_index)
    np.testing.assert_allclose(channels_last.boxes, built.boxes, atol=1e-2)  # pixels: float rounding only
    np.testing.assert_allclose(channels_last.embeddings, built.embeddings, atol=1e-4)
    assert channels_last.manifest["model"]["identity"] == built.manifest["model"]["identity"]
    with pytest.raises(SearchError, match="built with other arguments"):  # one index, one memory format
        build_index(cfg, "", gallery, built.root, **BUILD_ARGS)


def test_rerun_reuses_finished_index_and_refuses_other_arguments(built, gallery, monkeypatch):
    def no_forward(self, images):
        raise AssertionError("a finished index must not be recomputed")

    monkeypatch.setattr(index_module._Detector, "__call__", no_forward)
    again = build_index(tiny_cfg(*FAST_OPTS), "", gallery, built.root, **BUILD_ARGS)
    np.testing.assert_array_equal(again.embeddings, built.embeddings)
    with pytest.raises(SearchError, match="other arguments"):
        build_index(tiny_cfg(*FAST_OPTS), "", gallery, built.root, **dict(BUILD_ARGS, score_thresh=0.5))


def test_resume_after_interruption_gives_the_uninterrupted_result(built, gallery, tmp_path, monkeypatch, caplog):
    out = str(tmp_path / "index")
    forward = index_module._Detector.__call__
    calls = []

    def interrupted_after_first_batch(self, images):
        calls.append(len(images))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return forward(self, images)

    monkeypatch.setattr(index_module._Detector, "__call__", interrupted_after_first_batch)
    with pytest.raises(KeyboardInterrupt):
        build_index(tiny_cfg(*FAST_OPTS), "", gallery, out, **BUILD_ARGS)
    assert sorted(os.listdir(out)) == ["progress.json", "shards"]  # config.yaml comes with the manifest
    assert json.load(open(os.path.join(out, "progress.json")))["shards"][0]["next_position"] == 2

    with pytest.raises(SearchError, match="other arguments"):
        build_index(tiny_cfg(*FAST_OPTS), "", gallery, out, **dict(BUILD_ARGS, batch_size=1))

    calls.clear()
    with caplog.at_level(logging.WARNING, logger="person_search"):
        resumed = build_index(tiny_cfg(*FAST_OPTS), "", gallery, out, **BUILD_ARGS)
    assert calls == [2]  # only sub/c.jpg and sub/d.jpg were left
    for name in ("embeddings", "boxes", "scores", "image_index"):
        np.testing.assert_array_equal(getattr(resumed, name), getattr(built, name))
    assert resumed.manifest["images"] == built.manifest["images"]
    assert resumed.manifest["skipped"] == built.manifest["skipped"]
    assert resumed.manifest["model"] == built.manifest["model"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("Skipped 1 unreadable" in m and "broken.jpg" in m for m in warnings)


def write_video(path, num_frames, fps, size=(48, 64)):
    """An MJPG video whose frame i is filled with the gray level 20 * i."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (size[1], size[0]))
    assert writer.isOpened()
    for i in range(num_frames):
        writer.write(np.full((*size, 3), 20 * i, np.uint8))
    writer.release()


def test_video_source_samples_frames_with_index_and_time(tmp_path):
    path = tmp_path / "clip.avi"
    write_video(path, num_frames=7, fps=5.0)
    source = VideoSource(str(path), every=3)
    assert len(source) == 3
    items = list(source.iter_items())
    assert [(i.position, i.frame) for i in items] == [(0, 0), (1, 3), (2, 6)]
    assert [i.time for i in items] == pytest.approx([0.0, 0.6, 1.2])
    assert [float(i.image.mean()) for i in items] == pytest.approx([0, 60, 120], abs=3)
    # resuming from position 1 skips frame 0
    assert [i.frame for i in source.iter_items(1)] == [3, 6]
    frames = read_video_frames(str(path), [6, 2, 40])
    assert sorted(frames) == [2, 6]  # frame 40 is past the end
    assert float(frames[2].mean()) == pytest.approx(40, abs=3)


def test_video_index_records_frames(tmp_path):
    path = tmp_path / "clip.avi"
    write_video(path, num_frames=5, fps=10.0, size=(96, 128))
    index = build_index(tiny_cfg(*FAST_OPTS), "", str(path), str(tmp_path / "index"), video_every=2, **BUILD_ARGS)
    images = index.manifest["images"]
    assert [(r["path"], r["frame"]) for r in images] == [("clip.avi", 0), ("clip.avi", 2), ("clip.avi", 4)]
    assert [r["time"] for r in images] == pytest.approx([0.0, 0.2, 0.4])
    assert index.manifest["gallery"]["kind"] == "video" and index.manifest["gallery"]["every"] == 2
    assert index.image_record(2)["file"] == str(path)
    assert index.image_index.max() == 2


def random_index(n, dim, seed):
    rng = np.random.default_rng(seed)
    embeddings = rng.standard_normal((n, dim)).astype(np.float32)
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    return GalleryIndex(
        "memory",
        {"images": []},
        embeddings,
        np.zeros((n, 4), np.float32),
        np.ones(n, np.float32),
        np.zeros(n, np.int32),
    )


def test_faiss_and_numpy_rank_identically():
    index = random_index(500, 32, seed=0)
    queries = random_index(7, 32, seed=1).embeddings
    numpy_scores, numpy_ids = index.search(queries, 20, backend="numpy")
    faiss_scores, faiss_ids = index.search(queries, 20, backend="faiss")
    np.testing.assert_array_equal(numpy_ids, faiss_ids)
    np.testing.assert_allclose(numpy_scores, faiss_scores, atol=1e-5)
    # the known answer: a full sort of the similarity matrix
    expected = np.argsort(-(queries @ index.embeddings.T), axis=1)[:, :20]
    np.testing.assert_array_equal(numpy_ids, expected)
    assert numpy_ids.shape == (7, 20) and (np.diff(numpy_scores, axis=1) <= 0).all()
    # one query as a vector, k larger than the index
    scores, ids = random_index(5, 32, seed=2).search(queries[0], 10, backend="auto")
    assert ids.shape == (1, 5) and sorted(ids[0].tolist()) == [0, 1, 2, 3, 4]


def test_numpy_top_k_equals_a_stable_full_sort_with_ties():
    rng = np.random.default_rng(0)
    for _ in range(200):
        rows, columns = rng.integers(1, 5), rng.integers(1, 40)
        k = int(rng.integers(1, columns + 1))
        similarities = rng.integers(-3, 4, (rows, columns)).astype(np.float32)  # many ties
        expected = np.argsort(-similarities, axis=1, kind="stable")[:, :k]  # ties in index order
        np.testing.assert_array_equal(index_module._top_k(similarities, k), expected)


def test_numpy_search_in_query_chunks_gives_the_same_result(monkeypatch):
    index = random_index(300, 16, seed=5)
    queries = random_index(9, 16, seed=6).embeddings
    whole = index.search(queries, 7, backend="numpy")
    monkeypatch.setattr(index_module, "_NUMPY_SIMILARITIES_PER_CHUNK", 2 * 300)  # 2 queries per chunk
    chunked = index.search(queries, 7, backend="numpy")
    np.testing.assert_array_equal(whole[1], chunked[1])
    np.testing.assert_allclose(whole[0], chunked[0], atol=1e-6)  # BLAS may round another matrix shape differently


def test_auto_backend_switches_to_faiss_on_large_indexes(monkeypatch):
    index = random_index(50, 8, seed=3)
    monkeypatch.setattr(index_module, "FAISS_MIN_BOXES", 40)
    index.search(index.embeddings[:2], 3)
    assert index._faiss_index is not None


def test_search_rejects_bad_queries():
    index = random_index(5, 8, seed=4)
    with pytest.raises(SearchError, match=r"shape \(1, 4\): expected \(Q, 8\) or \(8,\)"):
        index.search(np.ones((1, 4), np.float32), 3)
    with pytest.raises(SearchError, match=r"shape \(1, 1, 8\)"):
        index.search(index.embeddings[None, :1], 3)
    with pytest.raises(SearchError, match="NaN or infinite"):
        index.search(np.full(8, np.nan, np.float32), 3)
    for topk in (0, "3", 2.5, True):
        with pytest.raises(SearchError, match="topk must be an integer >= 1"):
            index.search(index.embeddings[:1], topk)
    assert index.search(index.embeddings[:1], np.int64(2))[1].shape == (1, 2)
    with pytest.raises(SearchError, match="unknown search backend 'annoy'"):
        index.search(index.embeddings[:1], 3, backend="annoy")
    with pytest.raises(SearchError, match="no detected persons"):
        random_index(0, 8, seed=5).search(index.embeddings[:1], 3)


def test_clear_errors(tmp_path, gallery):
    cfg = tiny_cfg(*FAST_OPTS)
    out = str(tmp_path / "index")
    missing = str(tmp_path / "missing.pth")
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        build_index(cfg, missing, gallery, out)
    with pytest.raises(SearchError, match="--allow-random-weights"):
        build_index(cfg, "", gallery, out)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        build_index(cfg, "", str(tmp_path / "nowhere"), out, allow_random_weights=True)
    (tmp_path / "empty").mkdir()
    with pytest.raises(SearchError, match="contains no images"):
        build_index(cfg, "", str(tmp_path / "empty"), out, allow_random_weights=True)
    (tmp_path / "clip.avi").write_bytes(b"not a video")
    with pytest.raises(SearchError, match="cannot open video"):
        build_index(cfg, "", str(tmp_path / "clip.avi"), out, allow_random_weights=True)
    with pytest.raises(SearchError, match="must be >= 1"):
        build_index(cfg, "", gallery, out, batch_size=0, allow_random_weights=True)
    with pytest.raises(FileNotFoundError, match="not a .finished. gallery index"):
        GalleryIndex.load(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        load_search_config(str(tmp_path / "nope.yaml"))
    with pytest.raises(SearchError, match=r"config overrides \['MODEL.NO_SUCH_KEY', '1'\]"):
        load_search_config(TINY_CONFIG, ["MODEL.NO_SUCH_KEY", "1"])
    not_weights = tmp_path / "notes.pth"
    not_weights.write_text("not a checkpoint")
    with pytest.raises(SearchError, match="cannot load weights file .*notes.pth"):
        build_index(cfg, str(not_weights), gallery, out)
    with pytest.raises(SearchError, match="is an image file"):
        build_index(cfg, "", os.path.join(gallery, "a.jpg"), out, allow_random_weights=True)
    write_video(tmp_path / "no_frames.avi", 0, 5)
    with pytest.raises(SearchError, match="no_frames.avi yields no images"):
        build_index(cfg, "", str(tmp_path / "no_frames.avi"), str(tmp_path / "video_index"), allow_random_weights=True)
    assert not os.path.exists(tmp_path / "video_index")  # no partial index left behind
    (tmp_path / "empty_folder").mkdir()  # a folder the user made is kept
    with pytest.raises(SearchError, match="yields no images"):
        build_index(cfg, "", str(tmp_path / "no_frames.avi"), str(tmp_path / "empty_folder"), allow_random_weights=True)
    assert os.listdir(tmp_path / "empty_folder") == []


def test_index_never_touches_a_folder_it_did_not_write(tmp_path, gallery):
    cfg = tiny_cfg(*FAST_OPTS)
    user = tmp_path / "user"
    (user / "shards").mkdir(parents=True)
    (user / "config.yaml").write_text("mine")
    (user / "shards" / "notes.txt").write_text("mine too")
    with pytest.raises(SearchError, match="is not empty and holds no index"):
        build_index(cfg, "", gallery, str(user), **BUILD_ARGS)
    with pytest.raises(SearchError, match="is not empty and holds no index"):
        remove_index(str(user))
    assert (user / "config.yaml").read_text() == "mine" and (user / "shards" / "notes.txt").read_text() == "mine too"
    (user / "manifest.json").write_text('{"name": "my web app"}')  # a manifest.json that is not an index's
    with pytest.raises(SearchError, match="is not empty and holds no index"):
        remove_index(str(user))
    assert (user / "manifest.json").exists() and (user / "config.yaml").exists()
    (tmp_path / "a_file").write_text("")
    with pytest.raises(SearchError, match="is a file, expected a directory"):
        build_index(cfg, "", gallery, str(tmp_path / "a_file"), **BUILD_ARGS)


def test_damaged_manifest_is_named(built, tmp_path):
    import shutil

    copy = tmp_path / "index"
    shutil.copytree(built.root, copy)
    (copy / "manifest.json").write_text('{"truncated": ')
    with pytest.raises(SearchError, match=r"manifest.json is damaged"):
        GalleryIndex.load(str(copy))


def test_remove_index_keeps_other_files(built, gallery, tmp_path):
    out = tmp_path / "index"
    build_index(tiny_cfg(*FAST_OPTS), "", gallery, str(out), **BUILD_ARGS)
    (out / "my_notes.txt").write_text("keep")
    (out / "embeddings.npy.tmp").write_bytes(b"left by an interrupted write")
    remove_index(str(out))
    assert os.listdir(out) == ["my_notes.txt"]
    os.remove(out / "my_notes.txt")
    build_index(tiny_cfg(*FAST_OPTS), "", gallery, str(out), **BUILD_ARGS)
    remove_index(str(out))
    assert not out.exists()


def test_model_identity_of_indexes_built_earlier_holds():
    # The identity of the tiny config with random weights, as computed since before MODEL.CHANNELS_LAST and
    # MODEL.REID.EMBED_DETECTIONS_FROM existed: a new config key must not invalidate every existing index (hash it
    # only when set away from its default, see index._KEYS_HASHED_WHEN_CHANGED). Update this value only when the
    # tiny config file itself changes.
    assert model_identity(tiny_cfg(), "")["identity"] == (
        "3bb60b7bf7968580f2595e9e820d5aef2152546ce3982eb86d711928e155700e"
    )
    changed = tiny_cfg("MODEL.REID.EMBED_DETECTIONS_FROM", "proposals")
    assert model_identity(changed, "")["identity"] != model_identity(tiny_cfg(), "")["identity"]


def test_model_identity(tmp_path):
    cfg = tiny_cfg(*FAST_OPTS)
    dumped = tmp_path / "config.yaml"
    dumped.write_text(cfg.dump())
    reloaded = load_search_config(str(dumped))
    assert model_identity(reloaded, "")["identity"] == model_identity(cfg, "")["identity"]
    # keys that do not change an embedding do not change the identity; model keys, seeds and weights do
    fast_settings = ("SOLVER.BASE_LR", 0.5, "MODEL.DEVICE", "cuda", "MODEL.CHANNELS_LAST", True)
    assert model_identity(tiny_cfg(*FAST_OPTS, *fast_settings), "") == model_identity(
        cfg, ""
    )
    assert model_identity(tiny_cfg(*FAST_OPTS, "INPUT.MIN_SIZE_TEST", 80), "")["identity"] != model_identity(
        cfg, ""
    )["identity"]
    assert model_identity(cfg, "", seed=1)["identity"] != model_identity(cfg, "")["identity"]
    weights = tmp_path / "w.pth"
    weights.write_bytes(b"abc")
    with_weights = model_identity(cfg, str(weights))
    assert with_weights["weights_sha256"] == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    assert with_weights["weights"] == str(weights) and with_weights["random_seed"] is None
    # the tiny config itself loads through load_search_config
    assert load_search_config(TINY_CONFIG).MODEL.REID.EMBED_DIM == 32
