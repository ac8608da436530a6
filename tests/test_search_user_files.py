"""Users' own pictures in indexing and search: file formats, orientation, odd sizes, and the command's messages."""
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
from person_search.data import read_image_file
from person_search.search import SearchError, build_index, load_search_config, search_person
from person_search.search import index as index_module
from person_search.search import query as query_module

from conftest import TINY_CONFIG, tiny_cfg
from test_search_index import BUILD_ARGS, FAST_OPTS, write_image, write_video

EXIF_ORIENTATION = 0x0112


def test_sixteen_bit_pictures_are_scaled_not_clipped(tmp_path):
    levels = np.array([[0, 257 * 128, 65535]], np.uint16)  # 0, half, full scale
    Image.fromarray(levels).save(tmp_path / "gray16.png")
    assert Image.open(tmp_path / "gray16.png").mode.startswith("I")
    image = read_image_file(str(tmp_path / "gray16.png"), "BGR")
    assert image.dtype == np.uint8 and image.shape == (1, 3, 3)
    np.testing.assert_array_equal(image[0], [[0, 0, 0], [128, 128, 128], [255, 255, 255]])


@pytest.mark.parametrize("extension", ["tif", "jpg", "png"])
def test_exif_orientation_is_applied_once(tmp_path, extension):
    # orientation 6: the camera was turned, the viewer rotates the stored picture 90 degrees clockwise
    stored = np.zeros((20, 30, 3), np.uint8)
    stored[:4] = (255, 0, 0)  # a red band along the stored top edge
    exif = Image.new("RGB", (1, 1)).getexif()
    exif[EXIF_ORIENTATION] = 6
    path = tmp_path / f"turned.{extension}"
    Image.fromarray(stored).save(path, exif=exif, quality=100)
    image = read_image_file(str(path), "RGB")
    assert image.shape == (30, 20, 3)  # upright: as high as the stored picture is wide
    # the band is now along the right edge
    assert image[:, -4:, 0].min() > 200 and image[:, :-6, 0].max() < 60


def test_palette_alpha_and_gray_pictures_read_as_three_channels(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (12, 16, 3), dtype=np.uint8)
    for mode in ("P", "RGBA", "L", "LA", "CMYK"):
        path = tmp_path / f"{mode}.{'jpg' if mode == 'CMYK' else 'png'}"
        Image.fromarray(rgb).convert(mode).save(path)
        image = read_image_file(str(path), "BGR")
        assert image.shape == (12, 16, 3) and image.dtype == np.uint8, mode


def test_too_thin_pictures_are_skipped_in_galleries_and_refused_as_queries(tmp_path, caplog):
    gallery = tmp_path / "gallery"
    write_image(gallery / "a.jpg", 0)
    # 2 pixels high, 900 wide: the test-time resize caps the long side at 96 pixels, leaving 0.2 pixel rows
    write_image(gallery / "strip.png", 1, size=(2, 900))
    with caplog.at_level(logging.WARNING, logger="person_search"):
        index = build_index(tiny_cfg(*FAST_OPTS), "", str(gallery), str(tmp_path / "index"), **BUILD_ARGS)
    assert index.manifest["skipped"] == ["strip.png"]
    assert index.manifest["counts"]["images"] == 1 and len(index) > 0
    assert any("strip.png: 900x2 pixels is too thin" in r.getMessage() for r in caplog.records)
    with pytest.raises(SearchError, match="query image .*strip.png of 900x2 pixels is too thin"):
        search_person(index, str(gallery / "strip.png"), [0, 0, 900, 2])


def test_results_picture_shows_at_most_max_drawn_hits(tmp_path, monkeypatch):
    gallery = tmp_path / "gallery"
    for seed in range(2):
        write_image(gallery / f"img{seed}.jpg", seed)
    index = build_index(tiny_cfg(*FAST_OPTS), "", str(gallery), str(tmp_path / "index"), **BUILD_ARGS)
    assert len(index) >= 3
    monkeypatch.setattr(query_module, "MAX_DRAWN_HITS", 2)
    result = search_person(index, str(gallery / "img0.jpg"), index.boxes[0].tolist(), topk=3,
                           out_dir=str(tmp_path / "out"))
    assert len(json.loads(open(result["files"]["json"]).read())["hits"]) == 3
    height, width = query_module.TILE_SIZE
    assert cv2.imread(result["files"]["picture"]).shape == (height, 3 * width, 3)  # the query and 2 hits


def test_index_arguments_checked_and_differences_named(tmp_path):
    gallery = tmp_path / "gallery"
    write_image(gallery / "a.jpg", 0)
    out = str(tmp_path / "index")
    for thresh in (1.5, -0.1):
        with pytest.raises(SearchError, match=r"score threshold must be within \[0, 1\]"):
            build_index(tiny_cfg(*FAST_OPTS), "", str(gallery), out, **dict(BUILD_ARGS, score_thresh=thresh))
    build_index(tiny_cfg(*FAST_OPTS), "", str(gallery), out, **BUILD_ARGS)
    write_image(gallery / "b.jpg", 1)
    with pytest.raises(SearchError, match=r"other arguments \(the gallery: pictures were added, removed or changed"):
        build_index(tiny_cfg(*FAST_OPTS), "", str(gallery), out, **BUILD_ARGS)
    os.remove(gallery / "b.jpg")
    # a picture replaced under the same name is a changed gallery too, not a stale index
    stat = os.stat(gallery / "a.jpg")
    write_image(gallery / "a.jpg", 2)
    os.utime(gallery / "a.jpg", ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))
    with pytest.raises(SearchError, match="the gallery: pictures were added, removed or changed"):
        build_index(tiny_cfg(*FAST_OPTS), "", str(gallery), out, **BUILD_ARGS)
    write_image(gallery / "a.jpg", 0)  # the original content and size again, a newer time: still changed
    with pytest.raises(SearchError, match="the gallery: pictures were added, removed or changed"):
        build_index(tiny_cfg(*FAST_OPTS), "", str(gallery), out, **BUILD_ARGS)
    os.utime(gallery / "a.jpg", ns=(stat.st_atime_ns, stat.st_mtime_ns))  # and the original time
    with pytest.raises(SearchError, match=r"other arguments \(the score threshold \(0.0 then\)\)"):
        build_index(tiny_cfg(*FAST_OPTS), "", str(gallery), out, **dict(BUILD_ARGS, score_thresh=0.3))


def test_left_out_files_are_logged(tmp_path, caplog):
    gallery = tmp_path / "gallery"
    write_image(gallery / "a.jpg", 0)
    (gallery / "clip.mp4").write_bytes(b"a video among pictures")
    other = tmp_path / "other"
    write_image(other / "b.jpg", 1)
    os.symlink(other, gallery / "linked")
    with caplog.at_level(logging.INFO, logger="person_search"):
        index = build_index(tiny_cfg(*FAST_OPTS), "", str(gallery), str(tmp_path / "index"), **BUILD_ARGS)
    assert [image["path"] for image in index.manifest["images"]] == ["a.jpg"]
    assert any("2 files that are no images" in r.getMessage() and "clip.mp4, linked" in r.getMessage()
               for r in caplog.records)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without a GPU")
def test_cuda_config_on_a_machine_without_gpu(tmp_path, capsys):
    gallery = tmp_path / "gallery"
    write_image(gallery / "a.jpg", 0)
    argv = ["index", str(gallery), "--config", TINY_CONFIG, "--weights", "", "--allow-random-weights",
            "-o", str(tmp_path / "index"), "--opts", "MODEL.DEVICE", "cuda"]
    assert cli_main(argv) == 2
    assert "MODEL.DEVICE is 'cuda' but torch finds no CUDA device here" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "index")
    # a query config naming the GPU (from the API or --opts) falls back to the CPU: the device is no model identity
    index = build_index(tiny_cfg(*FAST_OPTS), "", str(gallery), str(tmp_path / "index"), **BUILD_ARGS)
    cuda_cfg = load_search_config(index.config_file, ["MODEL.DEVICE", "cuda"])
    result = search_person(index, str(gallery / "a.jpg"), index.boxes[0].tolist(), topk=1, cfg=cuda_cfg)
    assert result["hits"][0]["score"] == pytest.approx(1.0, abs=1e-4)
    assert cuda_cfg.MODEL.DEVICE == "cuda"  # the caller's config is left as it was


def test_cli_index_messages(tmp_path, capsys, monkeypatch):
    video = tmp_path / "clip.avi"
    write_video(video, num_frames=2, fps=4.0, size=(96, 128))
    opts = [str(v) for v in FAST_OPTS]
    argv = ["index", str(video), "--config", TINY_CONFIG, "--weights", "", "--allow-random-weights",
            "--score-thresh", "0", "-o", str(tmp_path / "index"), "--opts", *opts]
    assert cli_main(argv) == 0
    assert "persons in 2 frames (0 unreadable or too thin skipped)" in capsys.readouterr().out

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(index_module, "build_index", interrupted)
    argv[argv.index("-o") + 1] = str(tmp_path / "index2")
    assert cli_main(argv) == 130
    assert "interrupted; rerun the same command to resume" in capsys.readouterr().err
    shutil.rmtree(tmp_path / "index")
