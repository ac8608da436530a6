"""PRW loader on a tiny dataset written in the real files' layout (scipy.io.savemat, CRLF query_info.txt)."""
import logging
import os

import numpy as np
import pytest
from PIL import Image
from scipy.io import savemat

import person_search  # noqa: F401  (adapts detectron2 before its modules are imported)
from person_search.data import load_prw, prw_num_labeled

TRAIN = ["c1s1_000151", "c2s1_000200", "c1s1_000300"]
TEST = ["c3s2_044587", "c6s1_000010"]
# frame -> (annotation key, rows [pid, x, y, w, h])
ANNOTATIONS = {
    "c1s1_000151": ("box_new", [[483, -1.5, 10, 20, 40], [-2, 5, 6, 7, 8], [932, 1, 2, 0, 5]]),
    "c2s1_000200": ("anno_file", [[7, 0, -3, 10, 10], [5, 1, 1, 2, 2]]),
    "c1s1_000300": ("anno_previous", np.zeros((0, 5))),
    "c3s2_044587": ("box_new", [[605, 0, 295.5, 74.5, 338.25], [-2, 10, 10, 5, 5]]),
    "c6s1_000010": ("anno_file", [[605, 100, 100, 20, 40]]),
}


def frame_cell(frames):
    array = np.empty((len(frames), 1), dtype=object)
    for i, frame in enumerate(frames):
        array[i, 0] = np.array([frame])
    return array


@pytest.fixture
def root(tmp_path):
    root = tmp_path / "PRW"
    (root / "frames").mkdir(parents=True)
    (root / "annotations").mkdir()
    for i, frame in enumerate(TRAIN + TEST):
        Image.new("RGB", (64 + i, 48)).save(root / "frames" / f"{frame}.jpg")
    for frame, (key, rows) in ANNOTATIONS.items():
        savemat(root / "annotations" / f"{frame}.jpg.mat", {key: np.asarray(rows, dtype=np.float64)})
    savemat(root / "frame_train.mat", {"img_index_train": frame_cell(TRAIN)})
    savemat(root / "frame_test.mat", {"img_index_test": frame_cell(TEST)})
    savemat(root / "ID_train.mat", {"ID_train": np.array([[932, 7, 483]], dtype=np.float64)})
    (root / "query_info.txt").write_bytes(
        b"605 -1.7030 295.5756 74.6436 338.2289 c3s2_044587\r\n605 100 100 20 40 c6s1_000010\r\n"
    )
    return str(root)


def annotations_of(record):
    return [(a["bbox"], a["person_id"]) for a in record["annotations"]]


def test_train_split(root, caplog):
    with caplog.at_level(logging.WARNING):
        train = load_prw(root, "train")
    # The third frame has no box and is skipped; the zero-width box of the first frame is dropped.
    assert [r["image_id"] for r in train] == ["c1s1_000151.jpg", "c2s1_000200.jpg"]
    # ID_train sorted: 7 -> 0, 483 -> 1, 932 -> 2; -2 -> -1; 5 is not a training id -> -1 with a warning.
    # Negative x / y are clipped to 0 before adding w / h.
    assert annotations_of(train[0]) == [([0.0, 10.0, 20.0, 50.0], 1), ([5.0, 6.0, 12.0, 14.0], -1)]
    assert annotations_of(train[1]) == [([0.0, 0.0, 10.0, 10.0], 0), ([1.0, 1.0, 3.0, 3.0], -1)]
    assert [r["camera_id"] for r in train] == [1, 2]
    assert (train[1]["height"], train[1]["width"]) == (48, 65)
    assert train[0]["file_name"] == os.path.join(os.path.abspath(root), "frames", "c1s1_000151.jpg")
    assert "1 boxes have a pid that is not in ID_train.mat" in caplog.text
    assert "skipped 1 frames" in caplog.text
    assert prw_num_labeled(root) == 3


def test_gallery_split_keeps_raw_pids(root):
    gallery = load_prw(root, "gallery")
    assert [r["image_id"] for r in gallery] == ["c3s2_044587.jpg", "c6s1_000010.jpg"]
    assert annotations_of(gallery[0]) == [([0.0, 295.5, 74.5, 633.75], 605), ([10.0, 10.0, 15.0, 15.0], -1)]
    assert [r["camera_id"] for r in gallery] == [3, 6]


def test_query_split_crlf(root):
    queries = load_prw(root, "query")
    assert [(q["image_id"], q["person_id"], q["query_id"], q["camera_id"]) for q in queries] == [
        ("c3s2_044587.jpg", 605, 0, 3),
        ("c6s1_000010.jpg", 605, 1, 6),
    ]
    # Query boxes are [x, y, x + w, y + h] cut at 0 (not shifted like the annotations): x2 = -1.7030 + 74.6436.
    np.testing.assert_allclose(queries[0]["query_box"], [0.0, 295.5756, 72.9406, 295.5756 + 338.2289])
    assert queries[1]["query_box"] == [100.0, 100.0, 120.0, 140.0]
    assert (queries[0]["height"], queries[0]["width"]) == (48, 67)


def test_release_folder_name_is_accepted(root, tmp_path):
    os.rename(root, tmp_path / "PRW-v16.04.20")
    gallery = load_prw(root, "gallery")
    assert gallery[0]["file_name"].startswith(str(tmp_path / "PRW-v16.04.20"))


def test_malformed_query_line_names_file_and_line(root):
    with open(os.path.join(root, "query_info.txt"), "ab") as f:
        f.write(b"605 1 2 3 c1s1_000151\r\n")
    with pytest.raises(ValueError, match=r"query_info.txt, line 3: expected 'pid x y w h frame'"):
        load_prw(root, "query")


def test_annotation_without_known_key(root):
    savemat(os.path.join(root, "annotations", "c3s2_044587.jpg.mat"), {"boxes": np.zeros((1, 5))})
    with pytest.raises(ValueError, match=r"c3s2_044587.jpg.mat: expected one of the variables"):
        load_prw(root, "gallery")


def test_missing_files(root, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nowhere.*datasets/README.md"):
        load_prw(str(tmp_path / "nowhere"), "gallery")
    os.remove(os.path.join(root, "annotations", "c6s1_000010.jpg.mat"))
    with pytest.raises(FileNotFoundError, match="c6s1_000010.jpg.mat"):
        load_prw(root, "gallery")


@pytest.mark.parametrize("value, problem", [
    (np.array(["abcde"]), "expected numbers, got a MATLAB value of type <U5"),
    (np.array([[605, np.nan, 10, 5, 5]]), "expected finite numbers"),
])
def test_malformed_annotation_values_name_the_file(root, value, problem):
    savemat(os.path.join(root, "annotations", "c6s1_000010.jpg.mat"), {"box_new": value})
    with pytest.raises(ValueError, match=rf"c6s1_000010.jpg.mat, 'box_new': {problem}"):
        load_prw(root, "gallery")


def test_training_ids_must_be_non_negative_integers(root):
    savemat(os.path.join(root, "ID_train.mat"), {"ID_train": np.array([[-2, 7, 483]], dtype=np.float64)})
    with pytest.raises(ValueError, match=r"ID_train.mat: expected a non-empty vector of integer person ids >= 0"):
        prw_num_labeled(root)


def test_non_finite_query_box_names_file_and_line(root):
    with open(os.path.join(root, "query_info.txt"), "ab") as f:
        f.write(b"605 nan 2 3 4 c1s1_000151\r\n")
    with pytest.raises(ValueError, match=r"query_info.txt, line 3: .*non-finite box"):
        load_prw(root, "query")
