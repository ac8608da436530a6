"""Crop re-ID loaders (Market-1501, DukeMTMC-reID, CUHK03 new protocol), registration, CUHK03 extraction, mapper."""
import os
import uuid

import cv2
import numpy as np
import pytest
import scipy.io
import torch

import person_search  # noqa: F401
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.detection_utils import SizeMismatchError

from conftest import tiny_cfg
from person_search.data import load_cuhk03, load_cuhk03_classic, load_dukemtmc, load_market1501
from person_search.data.reid_datasets import extract_cuhk03_images, register_reid_splits
from person_search.data.reid_mapper import ReIDCropMapper
from person_search.data.synthetic import generate_market1501


def _write_crops(folder, names, size=(128, 64)):
    os.makedirs(folder, exist_ok=True)
    for k, name in enumerate(names):
        image = np.full((*size, 3), 10 * k % 255, dtype=np.uint8)
        assert cv2.imwrite(os.path.join(folder, name), image)


@pytest.fixture
def market_root(tmp_path):
    root = tmp_path / "Market-1501-v15.09.15"
    _write_crops(root / "bounding_box_train", ["0007_c1s1_000151_01.jpg", "0002_c3s1_000101_00.jpg",
                                               "0007_c2s1_000201_00.jpg", "0002_c6s2_000301_02.jpg"])
    _write_crops(root / "query", ["0004_c1s1_000401_00.jpg", "0009_c5s1_000501_00.jpg"])
    _write_crops(root / "bounding_box_test", ["-1_c1s1_000010_00.jpg", "0000_c2s1_000020_00.jpg",
                                              "0004_c2s1_000030_01.jpg", "0009_c5s1_000040_00.jpg",
                                              "-1_c4s1_000050_00.jpg"])
    (root / "bounding_box_test" / "Thumbs.db").write_bytes(b"not an image")
    return str(root)


def test_market1501_train_relabels_sorted_raw_ids(market_root):
    train = load_market1501(market_root, "train")
    # files sorted by name: 0002_c3, 0002_c6, 0007_c1, 0007_c2; raw ids 2, 7 -> 0, 1; cameras 1-based -> 0-based
    assert [(d["image_id"], d["person_id"], d["camera_id"]) for d in train] == [
        ("0002_c3s1_000101_00.jpg", 0, 2),
        ("0002_c6s2_000301_02.jpg", 0, 5),
        ("0007_c1s1_000151_01.jpg", 1, 0),
        ("0007_c2s1_000201_00.jpg", 1, 1),
    ]
    first = train[0]
    assert first["file_name"] == os.path.join(market_root, "bounding_box_train", first["image_id"])
    assert os.path.isabs(first["file_name"])
    assert (first["height"], first["width"], first["reid_split"]) == (128, 64, "train")


def test_market1501_gallery_drops_junk_keeps_distractors(market_root):
    gallery = load_market1501(market_root, "gallery")
    # the two "-1_" junk crops and Thumbs.db are dropped; the distractor keeps pid 0; test pids stay raw
    assert [(d["person_id"], d["camera_id"]) for d in gallery] == [(0, 1), (4, 1), (9, 4)]
    assert {d["reid_split"] for d in gallery} == {"gallery"}
    query = load_market1501(market_root, "query")
    assert [(d["person_id"], d["camera_id"], d["reid_split"]) for d in query] == [(4, 0, "query"), (9, 4, "query")]


def test_market1501_returns_fresh_copies(market_root):
    load_market1501(market_root, "query")[0]["person_id"] = 123
    assert load_market1501(market_root, "query")[0]["person_id"] == 4


def test_bad_names_and_missing_folders(tmp_path):
    root = tmp_path / "Market"
    _write_crops(root / "query", ["0004_c1s1_000401_00.jpg", "img_001.jpg"])
    with pytest.raises(ValueError, match=r"img_001\.jpg: expected a Market-1501 crop name"):
        load_market1501(str(root), "query")
    for i, bad in enumerate(["1-2_c1s1_000401_00.jpg", "-_c1s1_000401_00.jpg"]):  # digits and dashes, no pid
        other = tmp_path / f"Market{i}"
        _write_crops(other / "query", [bad])
        with pytest.raises(ValueError, match=rf"{bad}: expected a Market-1501 crop name"):
            load_market1501(str(other), "query")
    with pytest.raises(FileNotFoundError, match=r"bounding_box_train.*datasets/README.md"):
        load_market1501(str(root), "train")
    with pytest.raises(ValueError, match="unknown split 'test'"):
        load_market1501(str(root), "test")


def test_dukemtmc_reads_crop_sizes(tmp_path):
    root = tmp_path / "DukeMTMC-reID"
    _write_crops(root / "bounding_box_train", ["0005_c2_f0046985.jpg"], size=(100, 40))
    _write_crops(root / "bounding_box_train", ["0001_c8_f0000010.jpg"], size=(211, 77))
    train = load_dukemtmc(str(root), "train")
    assert [(d["image_id"], d["person_id"], d["camera_id"], d["height"], d["width"]) for d in train] == [
        ("0001_c8_f0000010.jpg", 0, 7, 211, 77),
        ("0005_c2_f0046985.jpg", 1, 1, 100, 40),
    ]


def test_synthetic_market1501_loads(tmp_path):
    root = str(tmp_path / "market")
    generate_market1501(root, preset="tiny", seed=1)
    train, query, gallery = (load_market1501(root, s) for s in ("train", "query", "gallery"))
    test_files = os.listdir(os.path.join(root, "bounding_box_test"))
    junk = sum(name.startswith("-1_") for name in test_files)
    assert junk > 0 and len(gallery) == len(test_files) - junk
    assert sorted({d["person_id"] for d in train}) == list(range(6))  # the tiny preset's 6 train identities
    assert any(d["person_id"] == 0 for d in gallery)
    assert {d["person_id"] for d in query} <= {d["person_id"] for d in gallery}


# ------------------------------------------------------------------------------------------------------ CUHK03


def _cuhk03_root(tmp_path, with_images=True):
    """New-protocol file over 8 crops: pids 11 (2 views), 30 (2 views) in train; pid 5 in test."""
    root = tmp_path / "cuhk03_release"
    names = ["1_011_1_01.png", "1_011_2_06.png", "2_030_1_02.png", "2_030_2_07.png",
             "1_005_1_01.png", "1_005_2_06.png", "1_005_2_07.png", "1_011_1_02.png"]
    labels = [11, 11, 30, 30, 5, 5, 5, 11]
    filelist = np.empty((len(names), 1), dtype=object)
    filelist[:, 0] = names
    os.makedirs(root, exist_ok=True)
    scipy.io.savemat(
        str(root / "cuhk03_new_protocol_config_labeled.mat"),
        {
            "filelist": filelist,
            "labels": np.array(labels, dtype=np.float64).reshape(-1, 1),  # MATLAB doubles
            "train_idx": np.array([[1], [2], [3], [4], [8]], dtype=np.float64),
            "query_idx": np.array([[5]], dtype=np.float64),
            "gallery_idx": np.array([[6], [7]], dtype=np.float64),
        },
    )
    if with_images:
        _write_crops(root / "images_labeled", names, size=(160, 60))
    return str(root)


def test_cuhk03_new_protocol(tmp_path):
    root = _cuhk03_root(tmp_path)
    train = load_cuhk03(root, "train")
    # train_idx 1, 2, 3, 4, 8 (1-based) -> raw labels 11, 11, 30, 30, 11 -> 0, 0, 1, 1, 0; camera = view - 1
    assert [(d["image_id"], d["person_id"], d["camera_id"]) for d in train] == [
        ("1_011_1_01.png", 0, 0), ("1_011_2_06.png", 0, 1), ("2_030_1_02.png", 1, 0), ("2_030_2_07.png", 1, 1),
        ("1_011_1_02.png", 0, 0),
    ]
    assert (train[0]["height"], train[0]["width"]) == (160, 60)
    assert train[0]["file_name"] == os.path.join(root, "images_labeled", "1_011_1_01.png")
    query, gallery = load_cuhk03(root, "query"), load_cuhk03(root, "gallery")
    assert [(d["person_id"], d["camera_id"], d["reid_split"]) for d in query] == [(5, 0, "query")]
    assert [(d["person_id"], d["camera_id"]) for d in gallery] == [(5, 1), (5, 1)]


def test_cuhk03_errors(tmp_path):
    root = _cuhk03_root(tmp_path, with_images=False)
    with pytest.raises(FileNotFoundError, match="images_labeled.*datasets/README.md"):
        load_cuhk03(root, "train")
    open(os.path.join(root, "cuhk-03.mat"), "wb").close()
    with pytest.raises(FileNotFoundError, match="extract_cuhk03_images"):
        load_cuhk03(root, "query")
    with pytest.raises(FileNotFoundError, match="cuhk03_new_protocol_config_detected.mat"):
        load_cuhk03(root, "train", subset="detected")
    with pytest.raises(ValueError, match="unknown subset"):
        load_cuhk03(root, "train", subset="both")
    scipy.io.savemat(
        os.path.join(root, "cuhk03_new_protocol_config_detected.mat"),
        {"filelist": np.array([["1_001_1_01.png"]], dtype=object), "labels": np.array([[1.0]]),
         "train_idx": np.array([[2.0]]), "query_idx": np.array([[1.0]]), "gallery_idx": np.array([[1.0]])},
    )
    with pytest.raises(ValueError, match=r"train_idx must hold 1-based indices into filelist \(1..1\)"):
        load_cuhk03(root, "train", subset="detected")


def test_extract_cuhk03_images(tmp_path):
    h5py = pytest.importorskip("h5py")
    root = tmp_path / "cuhk03_release"
    os.makedirs(root)
    rng = np.random.default_rng(0)
    # camera pair 1: 2 identities; pair 2: 1 identity. Cells (pid, image) left empty: all but the ones listed.
    filled = {1: {(0, 0): (20, 10), (0, 5): (22, 11), (1, 2): (18, 9)}, 2: {(0, 9): (25, 12)}}
    expected = {}
    with h5py.File(root / "cuhk-03.mat", "w") as f:
        refs_group = f.create_group("#refs#")
        empty = refs_group.create_dataset("empty", data=np.zeros(2, dtype=np.uint64))
        pair_refs = []
        for pair, cells in filled.items():
            num_ids = 1 + max(pid for pid, _ in cells)
            grid = np.full((10, num_ids), empty.ref, dtype=h5py.ref_dtype)  # MATLAB M x 10, stored transposed
            for (pid, image), (h, w) in cells.items():
                rgb = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
                data = refs_group.create_dataset(f"img_{pair}_{pid}_{image}", data=rgb.transpose(2, 1, 0))
                grid[image, pid] = data.ref
                view = 1 if image < 5 else 2
                expected[f"{pair}_{pid + 1:03d}_{view}_{image + 1:02d}.png"] = rgb
            pair_refs.append(refs_group.create_dataset(f"pair_{pair}", data=grid).ref)
        f.create_dataset("labeled", data=np.array([pair_refs], dtype=h5py.ref_dtype))
    assert extract_cuhk03_images(str(root), subsets=("labeled",)) == {"labeled": 4}
    written = sorted(os.listdir(root / "images_labeled"))
    assert written == sorted(expected)  # 1_001_1_01, 1_001_2_06, 1_002_1_03, 2_001_2_10
    for name, rgb in expected.items():
        bgr = cv2.imread(str(root / "images_labeled" / name))
        np.testing.assert_array_equal(bgr[:, :, ::-1], rgb)
    with pytest.raises(ValueError, match="expected the dataset 'detected'"):
        extract_cuhk03_images(str(root), subsets=("detected",))


def _write_classic_testsets(root, testsets):
    """cuhk-03.mat (MATLAB v7.3) holding only ``testsets``: cells of N x 2 [camera pair, pid] doubles."""
    h5py = pytest.importorskip("h5py")
    with h5py.File(os.path.join(root, "cuhk-03.mat"), "w") as f:
        refs = f.create_group("#refs#")
        cells = [refs.create_dataset(f"t{k}", data=np.array(rows, dtype=np.float64).T).ref  # stored transposed
                 for k, rows in enumerate(testsets)]
        f.create_dataset("testsets", data=np.array([cells], dtype=h5py.ref_dtype))


def test_cuhk03_classic_splits(tmp_path):
    root = _cuhk03_root(tmp_path)  # crops of (pair 1, pid 11), (2, 30), (1, 5)
    _write_classic_testsets(root, [[(1, 5)], [(1, 11), (2, 30)]])
    train = load_cuhk03_classic(root, "train")  # split 0: test identity (1, 5); the others train
    assert [(d["image_id"], d["person_id"], d["camera_id"]) for d in train] == [
        ("1_011_1_01.png", 0, 0), ("1_011_1_02.png", 0, 0), ("1_011_2_06.png", 0, 1),
        ("2_030_1_02.png", 1, 0), ("2_030_2_07.png", 1, 1),
    ]
    query, gallery = load_cuhk03_classic(root, "query"), load_cuhk03_classic(root, "gallery")
    assert [(d["image_id"], d["person_id"], d["camera_id"]) for d in query] == [
        ("1_005_1_01.png", 1005, 0), ("1_005_2_06.png", 1005, 1), ("1_005_2_07.png", 1005, 1),
    ]
    assert [d["image_id"] for d in gallery] == [d["image_id"] for d in query]
    assert {d["reid_split"] for d in gallery} == {"gallery"}
    second = load_cuhk03_classic(root, "gallery", split_index=1)
    assert sorted({d["person_id"] for d in second}) == [1011, 2030]
    assert sorted({d["person_id"] for d in load_cuhk03_classic(root, "train", split_index=1)}) == [0]

    with pytest.raises(ValueError, match="split_index 2 out of range, cuhk-03.mat holds 2 test sets"):
        load_cuhk03_classic(root, "train", split_index=2)
    with pytest.raises(ValueError, match="unknown subset"):
        load_cuhk03_classic(root, "train", subset="both")


def test_cuhk03_classic_errors(tmp_path, caplog):
    root = _cuhk03_root(tmp_path)
    with pytest.raises(FileNotFoundError, match="cuhk-03.mat"):
        load_cuhk03_classic(root, "train")
    _write_classic_testsets(root, [[(1, 5, 0)]])
    with pytest.raises(ValueError, match=r"testsets\{1\} has MATLAB shape \(1, 3\), expected N x 2"):
        load_cuhk03_classic(root, "train")

    other = _cuhk03_root(tmp_path / "other")
    _write_classic_testsets(other, [[(1, 5), (3, 1)]])  # (3, 1) has no crops
    with caplog.at_level("WARNING"):
        assert len(load_cuhk03_classic(other, "query")) == 3
    assert "1 of its 2 test identities have no crops" in caplog.text


def test_cuhk03_classic_evaluation_uses_the_single_gallery_shot_cmc(tmp_path):
    from person_search.engine import PersonSearchTrainer

    root = _cuhk03_root(tmp_path)
    _write_classic_testsets(root, [[(1, 11), (2, 30)]])
    prefix = f"test_cuhk03_classic_{uuid.uuid4().hex[:8]}"
    register_reid_splits(prefix, root, load_cuhk03_classic, cuhk03_single_gallery_shot=True)
    cfg = tiny_cfg("OUTPUT_DIR", str(tmp_path / "output"))  # where evaluate() writes reid_results.json
    evaluator = PersonSearchTrainer.build_evaluator(cfg, f"{prefix}_gallery")
    assert evaluator._single_gallery_shot
    evaluator.reset()
    for split in ("query", "gallery"):  # the same crops in both sets
        records = DatasetCatalog.get(f"{prefix}_{split}")
        outputs = [{"embedding": torch.tensor([1.0, 0.0] if d["person_id"] == 1011 else [0.0, 1.0])}
                   for d in records]
        evaluator.process(records, outputs)
    results = evaluator.evaluate()["reid"]
    assert results["rank1"] == pytest.approx(100.0) and results["mAP"] == pytest.approx(100.0)
    with pytest.raises(ValueError, match=f"'{prefix}_query' is a re-ID set without a query set.*gallery split"):
        PersonSearchTrainer.build_evaluator(tiny_cfg(), f"{prefix}_query")


# -------------------------------------------------------------------------------------------- registration


def test_builtin_registration_metadata():
    for prefix in ("market1501", "dukemtmc", "cuhk03", "cuhk03_detected"):
        for split in ("train", "query", "gallery"):
            assert f"{prefix}_{split}" in DatasetCatalog.list()
            assert MetadataCatalog.get(f"{prefix}_{split}").evaluator_type == "reid"
        assert MetadataCatalog.get(f"{prefix}_gallery").query_dataset == f"{prefix}_query"
        assert MetadataCatalog.get(f"{prefix}_query").gallery_dataset == f"{prefix}_gallery"
    assert MetadataCatalog.get("market1501_train").dataset_root.endswith("Market-1501-v15.09.15")
    assert not MetadataCatalog.get("cuhk03_gallery").cuhk03_single_gallery_shot
    for prefix in ("cuhk03_classic", "cuhk03_classic_detected"):
        for k in (0, 19):
            assert MetadataCatalog.get(f"{prefix}_split{k}_gallery").cuhk03_single_gallery_shot
            assert MetadataCatalog.get(f"{prefix}_split{k}_gallery").query_dataset == f"{prefix}_split{k}_query"


def test_register_reid_splits_sets_num_classes(market_root):
    prefix = f"test_market_{uuid.uuid4().hex[:8]}"
    register_reid_splits(prefix, market_root, load_market1501)
    try:
        assert len(DatasetCatalog.get(prefix + "_train")) == 4
        assert MetadataCatalog.get(prefix + "_train").num_classes == 2
        assert [d["person_id"] for d in DatasetCatalog.get(prefix + "_query")] == [4, 9]
    finally:
        for split in ("train", "query", "gallery"):
            DatasetCatalog.remove(f"{prefix}_{split}")
            MetadataCatalog.remove(f"{prefix}_{split}")


# ------------------------------------------------------------------------------------------------------ mapper


def test_mapper_train_and_test(market_root):
    record = load_market1501(market_root, "train")[0]
    cfg = tiny_cfg("INPUT.REID_CROP_SIZE", (64, 32), "INPUT.REID_CROP_PADDING", 4)
    out = ReIDCropMapper(cfg, is_train=True)(record)
    assert out["image"].shape == (3, 64, 32) and out["image"].dtype == torch.uint8
    assert (out["person_id"], out["camera_id"], out["image_id"]) == (0, 2, record["image_id"])
    assert "image" not in record  # the input record is not modified
    # inference: resize only; the fixture crop k=1 of the train folder is a flat image of value 10
    out = ReIDCropMapper(cfg, is_train=False)(record)
    assert out["image"].shape == (3, 64, 32) and int(out["image"].max()) == int(out["image"].min()) == 10


def test_mapper_padding_and_flip_keep_content(tmp_path):
    # a crop already of the target size with a bright left column: pad 2 + random crop shifts it by at most 2
    folder = tmp_path / "crops"
    os.makedirs(folder)
    image = np.zeros((16, 8, 3), dtype=np.uint8)
    image[:, 0] = 255
    cv2.imwrite(str(folder / "0001_c1s1_000001_00.png"), image)
    record = {"file_name": str(folder / "0001_c1s1_000001_00.png"), "height": 16, "width": 8, "person_id": 0}
    cfg = tiny_cfg("INPUT.REID_CROP_SIZE", (16, 8), "INPUT.REID_CROP_PADDING", 2)
    mapper = ReIDCropMapper(cfg, is_train=True)
    columns = set()
    for _ in range(40):
        bright = np.flatnonzero(mapper(record)["image"][0, 8].numpy() > 128)
        columns.update(bright.tolist())
    assert columns <= {0, 1, 2, 5, 6, 7}  # left column shifted by 0..2, or flipped to the right and shifted
    assert columns & {0, 1, 2} and columns & {5, 6, 7}


def test_mapper_rejects_wrong_size(market_root):
    record = dict(load_market1501(market_root, "train")[0], height=100)
    with pytest.raises(SizeMismatchError, match="Mismatched image shape"):
        ReIDCropMapper(tiny_cfg(), is_train=False)(record)
