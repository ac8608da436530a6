"""Querying a gallery index: self-retrieval, results JSON and picture, the CLI, and every refusal."""
import json
import logging
import os
import shutil

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from person_search.cli import main as cli_main
from person_search.search import GalleryIndex, SearchError, build_index, search_person
from person_search.search.query import TILE_SIZE, check_box, draw_results, parse_box

from conftest import TINY_CONFIG, tiny_cfg
from test_search_index import FAST_OPTS, write_image, write_video

SIZE = (96, 128)  # every gallery image has this size, so batching pads none of them


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory):
    """An index of three images built through `person-search index` with a random model."""
    gallery = tmp_path_factory.mktemp("gallery")
    for seed in range(3):
        write_image(gallery / f"img{seed}.jpg", seed, size=SIZE)
    out = str(tmp_path_factory.mktemp("index"))
    opts = [str(v) for v in FAST_OPTS]
    argv = ["index", str(gallery), "--config", TINY_CONFIG, "--weights", "", "--allow-random-weights"]
    assert cli_main(argv + ["-o", out, "--score-thresh", "0", "--batch-size", "2", "--opts"] + opts) == 0
    return out


def largest_box(index):
    """(image file, box) of the index's largest detected box."""
    boxes = index.boxes
    i = int(np.argmax((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])))
    return i, index.image_record(int(index.image_index[i]))["file"], boxes[i].tolist()


def test_gallery_box_queried_with_itself_ranks_first(index_dir, tmp_path):
    index = GalleryIndex.load(index_dir)
    box_idx, image, box = largest_box(index)
    result = search_person(index_dir, image, box, topk=3, out_dir=str(tmp_path / "out"))

    top = result["hits"][0]
    assert top["score"] == pytest.approx(1.0, abs=1e-4)
    assert top["image"] == image and top["box"] == pytest.approx(box)
    assert top["det_score"] == pytest.approx(float(index.scores[box_idx]))
    assert [h["rank"] for h in result["hits"]] == [1, 2, 3]
    assert all(a["score"] >= b["score"] for a, b in zip(result["hits"], result["hits"][1:]))
    assert result["query"]["box"] == box and result["query"]["image"] == image

    with open(result["files"]["json"]) as f:
        assert json.load(f) == json.loads(json.dumps(result))
    picture = cv2.imread(result["files"]["picture"])
    assert picture.shape == (TILE_SIZE[0], 4 * TILE_SIZE[1], 3)  # query crop + 3 hits in one row


def test_cli_query(index_dir, tmp_path, capsys):
    index = GalleryIndex.load(index_dir)
    _, image, box = largest_box(index)
    out = tmp_path / "out"
    argv = ["query", index_dir, "--image", image, "--box", ",".join(str(v) for v in box), "--topk", "2"]
    assert cli_main(argv + ["--out", str(out), "--backend", "faiss"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[-2:] == [str(out / "results.json"), str(out / "results.jpg")]
    assert printed[0].startswith("#1   1.0000")
    assert len(json.load(open(out / "results.json"))["hits"]) == 2

    # a refusal is an error message and exit code 2, not a traceback
    assert cli_main(["query", index_dir, "--image", image, "--box", "1,2,3", "--out", str(out)]) == 2
    assert "malformed" in capsys.readouterr().err


def test_draw_results_grid_and_missing_pictures():
    query = np.zeros((50, 40, 3), np.uint8)
    hits = [{"rank": r, "score": 0.5, "box": [1.0, 1.0, 10.0, 10.0], "frame": None} for r in (1, 2, 3, 4, 5)]
    picture = draw_results(query, [5, 5, 30, 45], hits, [np.zeros((20, 30, 3), np.uint8)] * 4 + [None])
    assert picture.shape == (2 * TILE_SIZE[0], 4 * TILE_SIZE[1], 3)  # 6 tiles, 4 per row
    # a box in the last pixel, with half-pixel corners (rounding both corners to 40 would crop nothing)
    query[49, 39] = 255
    picture = draw_results(query, [39.5, 49.5, 40, 50], [], [])
    assert picture.shape == (TILE_SIZE[0], TILE_SIZE[1], 3) and picture[30:-30, 30:-30].max() == 255


def test_box_parsing_and_checks():
    assert parse_box("1,2.5,30,40") == [1.0, 2.5, 30.0, 40.0]
    for text in ("1,2,3", "a,b,c,d", "1,2,3,4,5", ""):
        with pytest.raises(SearchError, match="malformed"):
            parse_box(text)
    assert check_box([0, 0, 128, 96], 128, 96, "x.jpg") == [0.0, 0.0, 128.0, 96.0]
    with pytest.raises(SearchError, match="malformed"):
        check_box([0, 0, float("nan"), 10], 128, 96, "x.jpg")
    with pytest.raises(SearchError, match="empty"):
        check_box([10, 10, 10, 50], 128, 96, "x.jpg")
    # thinner than a pixel: float32 rounding after the test-time resize could make it empty
    with pytest.raises(SearchError, match="smaller than 1 pixel"):
        check_box([100, 10, 100.0000001, 50], 128, 96, "x.jpg")
    assert check_box([127, 95, 128, 96], 128, 96, "x.jpg") == [127.0, 95.0, 128.0, 96.0]
    with pytest.raises(SearchError, match="not inside image x.jpg of size 128x96"):
        check_box([10, 10, 129, 50], 128, 96, "x.jpg")
    with pytest.raises(SearchError, match="not inside"):
        check_box([-1, 10, 20, 50], 128, 96, "x.jpg")


def test_query_refusals(index_dir, tmp_path, monkeypatch):
    index = GalleryIndex.load(index_dir)
    _, image, box = largest_box(index)
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image")
    with pytest.raises(SearchError, match="cannot read query image .*broken.jpg"):
        search_person(index, str(broken), box)
    with pytest.raises(SearchError, match="not inside image"):
        search_person(index, image, [0, 0, SIZE[1] + 5, 10])
    with pytest.raises(SearchError, match="empty"):
        search_person(index, image, [20, 20, 10, 40])
    with pytest.raises(SearchError, match="malformed"):
        search_person(index, image, [1, 2, 3])
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        search_person(index, image, box, weights=str(tmp_path / "missing.pth"))
    bomb = tmp_path / "bomb.png"  # a header claiming more pixels than PIL opens
    with monkeypatch.context() as patch:
        patch.setattr(Image, "MAX_IMAGE_PIXELS", 10)
        Image.new("RGB", (20, 20)).save(bomb)
        with pytest.raises(SearchError, match="cannot read query image .*bomb.png"):
            search_person(index, str(bomb), [0, 0, 5, 5])
    # a folder of the user's (a results.jpg of theirs, a gallery, the index) gets nothing written into it; an
    # earlier query's results are replaced
    out = tmp_path / "out"
    out.mkdir()
    (out / "results.jpg").write_bytes(b"my picture")
    for folder in (out, os.path.dirname(image), index_dir):
        before = sorted(os.listdir(folder))
        with pytest.raises(SearchError, match="is not empty and holds no results.json of an earlier query"):
            search_person(index, image, box, topk=1, out_dir=str(folder))
        assert sorted(os.listdir(folder)) == before
    assert (out / "results.jpg").read_bytes() == b"my picture"
    os.remove(out / "results.jpg")
    search_person(index, image, box, topk=1, out_dir=str(out))
    assert search_person(index, image, box, topk=2, out_dir=str(out))["files"]["json"] == str(out / "results.json")
    # paths in the result are absolute, also for a relative --out
    monkeypatch.chdir(tmp_path)
    files = search_person(index, image, box, topk=1, out_dir="out")["files"]
    assert files == {"json": str(out / "results.json"), "picture": str(out / "results.jpg")}


def test_query_refuses_another_model_unless_forced(index_dir, tmp_path, caplog):
    index = GalleryIndex.load(index_dir)
    _, image, box = largest_box(index)
    other_input = tiny_cfg(*FAST_OPTS, "INPUT.MIN_SIZE_TEST", 80)
    with pytest.raises(SearchError, match="differs from the one index"):
        search_person(index, image, box, cfg=other_input)
    with caplog.at_level(logging.WARNING, logger="person_search"):
        forced = search_person(index, image, box, topk=1, cfg=other_input, force=True)
    assert len(forced["hits"]) == 1 and "files" not in forced
    assert any("searching anyway (forced)" in r.getMessage() for r in caplog.records)

    # a weights file (its content is never loaded: the identity check comes first) is not "random, seed 0"
    weights = tmp_path / "model.pth"
    torch.save({"model": {}}, weights)
    with pytest.raises(SearchError, match="differs from the one index"):
        search_person(index, image, box, weights=str(weights))
    # keys that do not change embeddings are no mismatch
    assert search_person(index, image, box, topk=1, cfg=tiny_cfg(*FAST_OPTS, "SOLVER.BASE_LR", 0.5))["hits"]
    # embeddings of another size cannot be compared, forced or not: refused before the model build
    with pytest.raises(SearchError, match="gives 16-d embeddings .* holds 32-d ones"):
        search_person(index, image, box, cfg=tiny_cfg(*FAST_OPTS, "MODEL.REID.EMBED_DIM", 16), force=True)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the fallback of a machine without a GPU")
def test_index_built_on_a_gpu_is_queried_on_the_cpu(index_dir, tmp_path, caplog):
    copy = tmp_path / "index"
    shutil.copytree(index_dir, copy)
    config = (copy / "config.yaml").read_text()
    assert "DEVICE: cpu" in config
    (copy / "config.yaml").write_text(config.replace("DEVICE: cpu", "DEVICE: cuda"))
    _, image, box = largest_box(GalleryIndex.load(str(copy)))
    with caplog.at_level(logging.WARNING, logger="person_search"):
        result = search_person(str(copy), image, box, topk=1)
    assert result["hits"][0]["score"] == pytest.approx(1.0, abs=1e-4)
    assert any("no GPU here, querying on the CPU" in r.getMessage() for r in caplog.records)


def test_query_refuses_an_empty_index(tmp_path):
    gallery = tmp_path / "gallery"
    write_image(gallery / "img.jpg", 0, size=SIZE)
    out = str(tmp_path / "index")
    # no detection of the random model scores 1
    empty = build_index(tiny_cfg(*FAST_OPTS), "", str(gallery), out, score_thresh=1.0, allow_random_weights=True)
    assert len(empty) == 0 and empty.embeddings.shape == (0, 32)
    with pytest.raises(SearchError, match="holds no detected persons"):
        search_person(out, str(gallery / "img.jpg"), [0, 0, 10, 10])


def test_query_a_video_index(tmp_path):
    video = tmp_path / "clip.avi"
    write_video(video, num_frames=3, fps=4.0, size=SIZE)
    index = build_index(
        tiny_cfg(*FAST_OPTS), "", str(video), str(tmp_path / "index"), score_thresh=0.0, allow_random_weights=True
    )
    box_idx, _, box = largest_box(index)
    frame = index.manifest["images"][int(index.image_index[box_idx])]["frame"]
    # the query image: that frame as decoded from the video, stored losslessly
    query_image = tmp_path / "frame.png"
    cap = cv2.VideoCapture(str(video))
    for _ in range(frame + 1):
        ok, decoded = cap.read()
    cap.release()
    assert ok and cv2.imwrite(str(query_image), decoded)

    result = search_person(index, str(query_image), box, topk=2, out_dir=str(tmp_path / "out"))
    top = result["hits"][0]
    assert top["score"] == pytest.approx(1.0, abs=1e-4) and top["box"] == pytest.approx(box)
    assert top["frame"] == frame and top["time"] == pytest.approx(frame / 4.0) and top["image"] == str(video)
    assert cv2.imread(result["files"]["picture"]).shape == (TILE_SIZE[0], 3 * TILE_SIZE[1], 3)

    # the same person queried straight from the video frame, through the command line
    out = tmp_path / "from_video"
    argv = ["query", str(tmp_path / "index"), "--image", str(video), "--frame", str(frame),
            "--box", ",".join(str(v) for v in box), "--topk", "2", "--out", str(out)]
    assert cli_main(argv) == 0
    saved = json.loads((out / "results.json").read_text())
    assert saved["query"]["frame"] == frame and saved["query"]["image"] == str(video)
    assert saved["hits"][0]["score"] == pytest.approx(1.0, abs=1e-4) and saved["hits"][0]["frame"] == frame
    with pytest.raises(SearchError, match="has no frame 7"):
        search_person(index, str(video), box, frame=7)
    with pytest.raises(SearchError, match="query video .*missing.avi does not exist"):
        search_person(index, str(tmp_path / "missing.avi"), box, frame=0)
