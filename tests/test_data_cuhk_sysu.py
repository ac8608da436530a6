"""CUHK-SYSU loader on a tiny dataset written in the real files' MATLAB nesting (scipy.io.savemat)."""
import logging
import os

import numpy as np
import pytest
from PIL import Image
from scipy.io import savemat

import person_search  # noqa: F401  (adapts detectron2 before its modules are imported)
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode
from person_search.data import cuhk_sysu_num_labeled, cuhk_sysu_search_protocol, load_cuhk_sysu

IMAGE_SIZE = {"s1.jpg": (300, 400), "s2.jpg": (310, 420), "s3.jpg": (320, 440), "s4.jpg": (330, 460),
              "s5.jpg": (340, 480), "s6.jpg": (350, 500)}  # name -> (height, width)
POOL = ["s5.jpg", "s3.jpg", "s4.jpg", "s6.jpg"]  # test images; train = s1, s2 (s2 has only a zero-size box)


def struct(records, fields, shape=None):
    """A MATLAB struct array: numpy structured array with object fields (savemat writes it as a struct)."""
    array = np.zeros(shape or (1, len(records)), dtype=[(f, "O") for f in fields])
    for i, record in enumerate(records):
        for f in fields:
            array.reshape(-1)[i][f] = record[f]
    return array


def text(s):
    return np.array([s])


def loc(x, y, w, h, dtype=np.float64):
    return np.array([[x, y, w, h]], dtype=dtype)


def cell(items, shape):
    array = np.empty(shape, dtype=object)
    for i, item in enumerate(items):
        array.reshape(-1)[i] = item
    return array


# Images.mat content: name -> list of idlocate (uint8 where it fits, like the real file).
BOXES = {
    "s1.jpg": [loc(200, 10, 100, 90, np.uint8), loc(5, 5, 0, 50, np.uint8), loc(20, 30, 40, 80, np.uint8)],
    "s2.jpg": [loc(1, 2, 30, 0, np.uint8)],
    "s3.jpg": [loc(10, 20, 30, 40, np.uint8), loc(300, 40, 50, 100, np.uint16)],
    "s4.jpg": [loc(11, 21, 31, 41, np.uint8), loc(100, 100, 20, 20, np.uint8)],
    "s5.jpg": [loc(50, 60, 70, 80, np.uint8), loc(0, 0, 10, 10, np.uint8)],
    "s6.jpg": [loc(7, 8, 9, 10, np.uint8)],
}
# TestG<k>: (query image, query idlocate, [(gallery image, idlocate or None)]).
QUERIES = [
    ("s3.jpg", loc(10, 20, 30, 40), [("s6.jpg", None), ("s4.jpg", loc(11, 21, 31, 41)), ("s5.jpg", None)]),
    ("s5.jpg", loc(50, 60, 70, 80), [("s3.jpg", loc(300, 40, 50, 100)), ("s4.jpg", None), ("s6.jpg", None)]),
]


def write_testg(annotation, k, queries):
    records = []
    for imname, idlocate, gallery in queries:
        query = struct([{"imname": text(imname), "idlocate": idlocate, "ishard": np.array([[0.0]]),
                         "idname": text("p1")}], ["imname", "idlocate", "ishard", "idname"])
        entries = [{"imname": text(g), "idlocate": np.zeros((0, 0)) if b is None else b,
                    "ishard": np.zeros((0, 0)) if b is None else np.array([[0.0]])} for g, b in gallery]
        records.append({"Query": query, "Gallery": struct(entries, ["imname", "idlocate", "ishard"])})
    savemat(os.path.join(annotation, "test", "train_test", f"TestG{k}.mat"),
            {f"TestG{k}": struct(records, ["Query", "Gallery"])})


def write_subset(annotation, file_name, key, queries, extra_fields):
    records = []
    for imname, idlocate in queries:
        query = struct([{"imname": text(imname), "idlocate": idlocate, "ishard": np.array([[0.0]]),
                         "idname": text("p1")}], ["imname", "idlocate", "ishard", "idname"])
        records.append(dict({"Query": query, "Gallery": np.zeros((0, 0))}, **{f: np.array([[1.0]]) for f in extra_fields}))
    savemat(os.path.join(annotation, "test", "subset", file_name),
            {key: struct(records, ["Query", "Gallery", *extra_fields])})


@pytest.fixture
def root(tmp_path):
    root = tmp_path / "CUHK-SYSU"
    (root / "Image" / "SSM").mkdir(parents=True)
    annotation = root / "annotation"
    (annotation / "test" / "train_test").mkdir(parents=True)
    (annotation / "test" / "subset").mkdir()
    for name, (h, w) in IMAGE_SIZE.items():
        Image.new("RGB", (w, h)).save(root / "Image" / "SSM" / name)

    images = []
    for name, locs in BOXES.items():
        box = struct([{"idlocate": b, "ishard": np.array([[0]], np.uint8)} for b in locs], ["idlocate", "ishard"])
        images.append({"imname": text(name), "nAppear": np.array([[len(locs)]], np.uint8), "box": box})
    savemat(annotation / "Images.mat", {"Img": struct(images, ["imname", "nAppear", "box"])})
    savemat(annotation / "pool.mat", {"pool": cell([text(n) for n in POOL], (len(POOL), 1))})

    # Train identity 0 appears twice in s1 (its first box and, not matching any box, a made-up one);
    # identity 1 is the third box of s1 (stored uint8, matched after the zero-size box is dropped).
    def person(idname, scenes):
        scene = struct([{"imname": text(n), "idlocate": b, "ishard": np.array([[0]])} for n, b in scenes],
                       ["imname", "idlocate", "ishard"])
        return struct([{"idname": text(idname), "nAppear": np.array([[len(scenes)]]), "scene": scene}],
                      ["idname", "nAppear", "scene"])

    train = [person("a1", [("s1.jpg", loc(200, 10, 100, 90, np.uint8)), ("s1.jpg", loc(1, 1, 1, 1))]),
             person("a2", [("s1.jpg", loc(20, 30, 40, 80, np.uint8))])]
    savemat(annotation / "test" / "train_test" / "Train.mat", {"Train": cell(train, (2, 1))})
    write_testg(str(annotation), 50, QUERIES)
    # TestG100: positives listed after a negative, to check they are put first.
    write_testg(str(annotation), 100, [(q, b, list(reversed(g))) for q, b, g in QUERIES])
    write_subset(str(annotation), "Occlusion.mat", "Occlusion1", [("s5.jpg", loc(50, 60, 70, 80))], ["occlusion"])
    write_subset(str(annotation), "Resolution.mat", "Test_Size", [("s3.jpg", loc(10, 20, 30, 40))], [])
    return str(root)


def annotations_of(record):
    return [(a["bbox"], a["person_id"]) for a in record["annotations"]]


def test_train_split(root, caplog):
    with caplog.at_level(logging.WARNING):
        train = load_cuhk_sysu(root, "train")
    # s2 keeps no box (its only box has height 0) and is skipped; s1's zero-width box is dropped.
    assert [r["image_id"] for r in train] == ["s1.jpg"]
    record = train[0]
    assert record["file_name"] == os.path.join(os.path.abspath(root), "Image", "SSM", "s1.jpg")
    assert (record["height"], record["width"]) == (300, 400)
    # uint8 200 + 100 would wrap to 44 without the cast.
    assert annotations_of(record) == [([200.0, 10.0, 300.0, 100.0], 0), ([20.0, 30.0, 60.0, 110.0], 1)]
    assert all(a["bbox_mode"] == BoxMode.XYXY_ABS and a["category_id"] == 0 for a in record["annotations"])
    assert "1 labeled boxes match no box" in caplog.text
    assert "skipped 1 images" in caplog.text
    assert cuhk_sysu_num_labeled(root) == 2


def test_gallery_split(root):
    gallery = load_cuhk_sysu(root, "gallery")
    assert [r["image_id"] for r in gallery] == POOL
    by_name = {r["image_id"]: annotations_of(r) for r in gallery}
    # Query 0: its box in s3 and the non-empty TestG50 entry in s4; query 1: its box in s5 and the s3 entry.
    assert by_name["s3.jpg"] == [([10.0, 20.0, 40.0, 60.0], 0), ([300.0, 40.0, 350.0, 140.0], 1)]
    assert by_name["s4.jpg"] == [([11.0, 21.0, 42.0, 62.0], 0), ([100.0, 100.0, 120.0, 120.0], -1)]
    assert by_name["s5.jpg"] == [([50.0, 60.0, 120.0, 140.0], 1), ([0.0, 0.0, 10.0, 10.0], -1)]
    assert by_name["s6.jpg"] == [([7.0, 8.0, 16.0, 18.0], -1)]


def test_query_split(root):
    queries = load_cuhk_sysu(root, "query")
    assert [(q["image_id"], q["query_box"], q["person_id"], q["query_id"]) for q in queries] == [
        ("s3.jpg", [10.0, 20.0, 40.0, 60.0], 0, 0),
        ("s5.jpg", [50.0, 60.0, 120.0, 140.0], 1, 1),
    ]
    assert [(q["occlusion"], q["resolution"]) for q in queries] == [(False, True), (True, False)]
    assert (queries[1]["height"], queries[1]["width"]) == (340, 480)


def test_missing_subset_files_give_false_flags(root, caplog):
    os.remove(os.path.join(root, "annotation", "test", "subset", "Occlusion.mat"))
    with caplog.at_level(logging.WARNING):
        queries = load_cuhk_sysu(root, "query")
    assert [q["occlusion"] for q in queries] == [False, False]
    assert "Occlusion.mat not found" in caplog.text


@pytest.mark.parametrize("size", [50, 100])
def test_search_protocol_puts_positives_first(root, size):
    protocol = cuhk_sysu_search_protocol(root, size)
    assert [p["gallery"] for p in protocol] == [["s4.jpg", "s6.jpg", "s5.jpg"], ["s3.jpg", "s4.jpg", "s6.jpg"]] \
        if size == 50 else [["s4.jpg", "s5.jpg", "s6.jpg"], ["s3.jpg", "s6.jpg", "s4.jpg"]]
    np.testing.assert_array_equal(protocol[0]["positive_boxes"], [[11, 21, 42, 62]])
    np.testing.assert_array_equal(protocol[1]["positive_boxes"], [[300, 40, 350, 140]])
    assert protocol[0]["positive_boxes"].dtype == np.float32


def test_full_set_protocol(root):
    protocol = cuhk_sysu_search_protocol(root, -1)
    # Positives of TestG50 first, then every other pool image in pool order, never the query image.
    assert [p["gallery"] for p in protocol] == [["s4.jpg", "s5.jpg", "s6.jpg"], ["s3.jpg", "s4.jpg", "s6.jpg"]]
    np.testing.assert_array_equal(protocol[1]["positive_boxes"], [[300, 40, 350, 140]])


def test_search_protocol_parses_only_the_needed_file(root):
    os.remove(os.path.join(root, "annotation", "test", "train_test", "TestG100.mat"))
    assert len(cuhk_sysu_search_protocol(root, 50)) == 2
    with pytest.raises(FileNotFoundError, match="TestG100.mat"):
        cuhk_sysu_search_protocol(root, 100)
    with pytest.raises(ValueError, match=r"\(50, 100, 500, 1000, 2000, 4000\)"):
        cuhk_sysu_search_protocol(root, 200)


def test_loads_return_independent_copies(root):
    first = load_cuhk_sysu(root, "gallery")
    first[0]["annotations"].clear()
    assert load_cuhk_sysu(root, "gallery")[0]["annotations"]


def test_errors_name_the_file(tmp_path, root):
    with pytest.raises(FileNotFoundError, match=r"nowhere.*datasets/README.md"):
        load_cuhk_sysu(str(tmp_path / "nowhere"), "train")
    os.remove(os.path.join(root, "annotation", "pool.mat"))
    with pytest.raises(FileNotFoundError, match="pool.mat"):
        load_cuhk_sysu(root, "gallery")
    with pytest.raises(ValueError, match="split"):
        load_cuhk_sysu(root, "test")


def test_malformed_idlocate_names_the_record(tmp_path):
    root = tmp_path / "CUHK-SYSU"
    (root / "annotation").mkdir(parents=True)
    box = struct([{"idlocate": np.array([[1, 2, 3]]), "ishard": np.array([[0]])}], ["idlocate", "ishard"])
    image = {"imname": text("s1.jpg"), "nAppear": np.array([[1]]), "box": box}
    savemat(root / "annotation" / "Images.mat", {"Img": struct([image], ["imname", "nAppear", "box"])})
    savemat(root / "annotation" / "pool.mat", {"pool": cell([text("s1.jpg")], (1, 1))})
    with pytest.raises(ValueError, match=r"Images.mat, Img\(1\)\.box\(1\)\.idlocate: expected idlocate"):
        load_cuhk_sysu(str(root), "train")


def test_registration_reads_from_the_catalog(root):
    meta = MetadataCatalog.get("cuhk_sysu_gallery")
    assert meta.evaluator_type == "person_search" and meta.protocol == "cuhk_sysu"
    assert meta.query_dataset == "cuhk_sysu_query" and meta.thing_classes == ["person"]
    assert meta.gallery_sizes == (50, 100, 500, 1000, 2000, 4000)
    names = ["cuhk_sysu_train", "cuhk_sysu_gallery", "cuhk_sysu_query"]
    saved = {n: (DatasetCatalog[n], MetadataCatalog.get(n)) for n in names}
    try:
        for n in names:
            DatasetCatalog.remove(n)
            MetadataCatalog.remove(n)
        from person_search.data.builtin import register_cuhk_sysu

        register_cuhk_sysu(os.path.dirname(root))
        assert len(DatasetCatalog.get("cuhk_sysu_train")) == 1
        assert MetadataCatalog.get("cuhk_sysu_train").num_labeled == 2
        protocol = MetadataCatalog.get("cuhk_sysu_gallery").search_protocol(50)
        assert protocol[0]["gallery"][0] == "s4.jpg"
    finally:
        for n, (loader, meta) in saved.items():
            DatasetCatalog.remove(n)
            MetadataCatalog.remove(n)
            DatasetCatalog.register(n, loader)
            MetadataCatalog.get(n).set(**{k: v for k, v in meta.as_dict().items() if k != "name"})
