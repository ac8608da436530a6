"""CUHK-SYSU loader on a tiny dataset written in the real files' MATLAB nesting (scipy.io.savemat), the streaming
TestG reader against loadmat on files of several writers, and the parsed-protocol cache."""
import logging
import os
import shutil
import struct as _struct
import zlib

import numpy as np
import pytest
from PIL import Image
from scipy.io import loadmat, savemat

import person_search  # noqa: F401  (adapts detectron2 before its modules are imported)
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode
from person_search.data import cuhk_sysu as cuhk_module
from person_search.data import cuhk_sysu_num_labeled, cuhk_sysu_search_protocol, load_cuhk_sysu, mat_stream, synthetic

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


def make_testg_struct(queries):
    """The TestG<k> struct array for scipy's savemat: (query image, query box, [(gallery image, box or None)])."""
    records = []
    for imname, idlocate, gallery in queries:
        query = struct([{"imname": text(imname), "idlocate": idlocate, "ishard": np.array([[0.0]]),
                         "idname": text("p1")}], ["imname", "idlocate", "ishard", "idname"])
        entries = [{"imname": text(g), "idlocate": np.zeros((0, 0)) if b is None else b,
                    "ishard": np.zeros((0, 0)) if b is None else np.array([[0.0]])} for g, b in gallery]
        records.append({"Query": query, "Gallery": struct(entries, ["imname", "idlocate", "ishard"])})
    return struct(records, ["Query", "Gallery"])


def write_testg(annotation, k, queries):
    savemat(os.path.join(annotation, "test", "train_test", f"TestG{k}.mat"), {f"TestG{k}": make_testg_struct(queries)})


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


@pytest.mark.parametrize("idlocate, problem", [
    (np.array([[1, 2, 3]]), "expected idlocate"),
    (text("abcd"), "expected numbers"),  # a char value where the box belongs
])
def test_malformed_idlocate_names_the_record(tmp_path, idlocate, problem):
    root = tmp_path / "CUHK-SYSU"
    (root / "annotation").mkdir(parents=True)
    box = struct([{"idlocate": idlocate, "ishard": np.array([[0]])}], ["idlocate", "ishard"])
    image = {"imname": text("s1.jpg"), "nAppear": np.array([[1]]), "box": box}
    savemat(root / "annotation" / "Images.mat", {"Img": struct([image], ["imname", "nAppear", "box"])})
    savemat(root / "annotation" / "pool.mat", {"pool": cell([text("s1.jpg")], (1, 1))})
    with pytest.raises(ValueError, match=rf"Images.mat, Img\(1\)\.box\(1\)\.idlocate: {problem}"):
        load_cuhk_sysu(str(root), "train")


def test_testg_files_must_list_the_queries_of_testg50_in_its_order(root):
    # The query set comes from TestG50; entry i of TestG100 would silently belong to another query.
    write_testg(os.path.join(root, "annotation"), 100, list(reversed(QUERIES)))
    with pytest.raises(ValueError, match=r"TestG100.mat: query 1 is \('s5.jpg'.*TestG50.mat has \('s3.jpg'"):
        cuhk_sysu_search_protocol(root, 100)


def test_registering_again_points_the_names_at_another_root(root):
    from person_search.data import register_person_search_datasets

    default_root = MetadataCatalog.get("cuhk_sysu_train").dataset_root
    try:
        register_person_search_datasets(os.path.dirname(root))  # the import registered these names already
        assert MetadataCatalog.get("cuhk_sysu_train").dataset_root == root
        assert MetadataCatalog.get("prw_gallery").query_dataset == "prw_query"
        assert len(DatasetCatalog.get("cuhk_sysu_train")) == 1
    finally:
        register_person_search_datasets(os.path.dirname(default_root))
    assert MetadataCatalog.get("cuhk_sysu_train").dataset_root == default_root


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


# ---------------------------------------------------------------------------------------------------------------
# Streaming TestG reader (person_search/data/mat_stream.py) and the parsed-protocol cache
# ---------------------------------------------------------------------------------------------------------------

# Varied TestG content: names of 4 bytes (a MAT 'small data element') to 12, positives anywhere in the gallery,
# uint8 / uint16 / double boxes, a uint16 box whose first data word equals the miMATRIX tag (14), a gallery
# without positives, galleries of different lengths.
STREAM_QUERIES = [
    ("s3.jpg", loc(10, 20, 30, 40, np.uint8),
     [("s6.jpg", None), ("s4.jpg", loc(11, 21, 31, 41, np.uint8)), ("s5.jpg", None), ("s123456.jpg", None)]),
    ("s5.jpg", loc(500, 60, 70, 80, np.uint16),
     [("s3.jpg", loc(300, 40, 50, 100, np.uint16)), ("s4.jpg", None), ("a.jp", loc(14, 0, 300, 20, np.uint16))]),
    ("s4.jpg", loc(1.0, 2.0, 3.0, 4.0), [("s6.jpg", None), ("s5.jpg", None)]),
    ("s6.jpg", loc(14, 0, 300, 20, np.uint16), [("s3.jpg", loc(7, 8, 9, 10)), ("s4.jpg", None),
                                                   ("s123456.jpg", loc(2, 3, 4, 5, np.uint8))]),
]


def _matlab_char(text):
    """A char row as MATLAB writes it: UTF-16 code units (miUINT16), not scipy's miUTF8."""
    data = text.encode("utf-16-le")
    return synthetic._mat_matrix(4, (1, len(text)), synthetic._mat_element(4, data))


def _matlab_double(values):
    """A double row stored compactly as miUINT8 / miUINT16 data, as MATLAB does for small integers."""
    data = np.asarray(values, dtype=np.uint8 if max(values) < 256 else np.uint16)
    return synthetic._mat_matrix(6, (1, len(values)), synthetic._mat_element(2 if data.itemsize == 1 else 4,
                                                                             data.tobytes()))


_MATLAB_EMPTY = _struct.pack("<II", 14, 0)  # [] in a struct field: a miMATRIX without any sub-element


def _matlab_testg(queries):
    """TestG struct as (key-less) miMATRIX bytes in MATLAB's own encoding choices."""
    records = []
    for imname, idlocate, gallery in queries:
        query = synthetic._struct(("imname", "idlocate", "ishard", "idname"),
                                  [(_matlab_char(imname), idlocate.astype(np.uint16), _matlab_double([0]),
                                    _matlab_char("p12"))])
        entries = [(_matlab_char(g), _MATLAB_EMPTY if b is None else _matlab_double(b.astype(int).ravel().tolist()),
                    _MATLAB_EMPTY if b is None else _matlab_double([1])) for g, b in gallery]
        records.append((query, synthetic._struct(("imname", "idlocate", "ishard"), entries)))
    return synthetic._struct(("Query", "Gallery"), records)


def _write_matlab_file(path, variables, compress):
    """A MAT-file written from synthetic's encoder; with ``compress`` each variable is a zlib miCOMPRESSED
    element (MATLAB's default '-v7' format)."""
    with open(path, "wb") as f:
        f.write(synthetic._MAT_HEADER)
        for key, value in variables.items():
            data = synthetic._mat_encode(value, key.encode())
            if compress:
                data = zlib.compress(data)
                data = _struct.pack("<II", 15, len(data)) + data
            f.write(data)


def _write_testg_variants(folder, writer, k=7):
    """TestG<k>.mat written by ``writer``; returns its path."""
    path = os.path.join(folder, f"TestG{k}.mat")
    extra = {"before": np.arange(12.0).reshape(3, 4), "note": np.array(["ignored"])}
    if writer in ("scipy", "scipy-compressed"):
        # Other variables before and after the protocol: the reader skips them without decoding.
        savemat(path, dict(extra, **{f"TestG{k}": make_testg_struct(STREAM_QUERIES)}, after=np.ones((2, 2))),
                do_compression=writer == "scipy-compressed")
    elif writer == "synthetic":
        rows = [(struct([{"imname": text(q), "idlocate": b, "ishard": np.array([[0]], np.uint8),
                          "idname": text("p1")}], ["imname", "idlocate", "ishard", "idname"]),
                 synthetic._struct(("imname", "idlocate", "ishard"),
                                   [(text(g), synthetic._EMPTY if gb is None else gb,
                                     synthetic._EMPTY if gb is None else synthetic._scalar(0)) for g, gb in gal]))
                for q, b, gal in STREAM_QUERIES]
        synthetic._savemat(path, dict(extra, **{f"TestG{k}": synthetic._struct(("Query", "Gallery"), rows)}))
    else:  # "matlab" / "matlab-compressed"
        _write_matlab_file(path, dict(extra, **{f"TestG{k}": _matlab_testg(STREAM_QUERIES)}),
                           compress=writer == "matlab-compressed")
    return path


def assert_same_testg(a, b):
    """Two parses of a TestG file describe the same protocol (name ids may differ)."""
    assert a["query_names"] == b["query_names"]
    for key in ("offsets", "num_positive", "positive_xywh", "query_xywh"):
        np.testing.assert_array_equal(a[key], b[key])
        assert a[key].dtype == b[key].dtype, key
    names_a, names_b = np.array(a["names"], dtype=object), np.array(b["names"], dtype=object)
    assert names_a[a["gallery"]].tolist() == names_b[b["gallery"]].tolist()


@pytest.mark.parametrize("writer", ["scipy", "scipy-compressed", "synthetic", "matlab", "matlab-compressed"])
def test_stream_reader_matches_loadmat(tmp_path, writer):
    path = _write_testg_variants(str(tmp_path), writer)
    streamed = cuhk_module._testg_stream(path, "TestG7")
    reference = cuhk_module._testg_loadmat(path, "TestG7")
    assert_same_testg(streamed, reference)
    # And the content is what was written: positives first, in file order, then the other images.
    names = np.array(streamed["names"], dtype=object)
    galleries = [names[streamed["gallery"][a:b]].tolist()
                 for a, b in zip(streamed["offsets"][:-1], streamed["offsets"][1:])]
    assert galleries == [["s4.jpg", "s6.jpg", "s5.jpg", "s123456.jpg"], ["s3.jpg", "a.jp", "s4.jpg"],
                         ["s6.jpg", "s5.jpg"], ["s3.jpg", "s123456.jpg", "s4.jpg"]]
    assert streamed["num_positive"].tolist() == [1, 2, 0, 2]
    np.testing.assert_array_equal(streamed["positive_xywh"], [[11, 21, 31, 41], [300, 40, 50, 100],
                                                              [14, 0, 300, 20], [7, 8, 9, 10], [2, 3, 4, 5]])
    assert streamed["query_names"] == ["s3.jpg", "s5.jpg", "s4.jpg", "s6.jpg"]
    np.testing.assert_array_equal(streamed["query_xywh"][1], [500, 60, 70, 80])


def test_stream_reader_on_generated_dataset(tmp_path):
    """TestG files of the project's generator (streamed to disk by synthetic._savemat_struct_stream)."""
    root = str(tmp_path / "CUHK-SYSU")
    synthetic.generate_cuhk_sysu(root, preset="tiny", gallery_sizes=(5, 50), write_images=False)
    for k in (5, 50):
        path = cuhk_module._testg_path(root, k)
        assert_same_testg(cuhk_module._testg_stream(path, f"TestG{k}"), cuhk_module._testg_loadmat(path, f"TestG{k}"))
    # The full-set protocol needs no image either.
    assert len(cuhk_sysu_search_protocol(root, -1)) == 8


def test_stream_decode_matches_loadmat(tmp_path):
    path = str(tmp_path / "values.mat")
    values = {"cellv": cell([text("ab"), np.array([[1, 2], [3, 4]], np.int32), np.zeros((0, 0))], (1, 3)),
              "chars": np.array(["ab", "cd"]), "matrix": np.arange(6.0).reshape(2, 3)}
    savemat(path, values)
    blob = open(path, "rb").read()[128:]
    offset = 0
    reference = loadmat(path)
    for key in ("cellv", "chars", "matrix"):
        decoded = mat_stream.decode(blob, offset)
        expected = reference[key]
        if decoded.dtype == object:
            assert decoded.shape == expected.shape
            for d, e in zip(decoded.ravel(), expected.ravel()):
                np.testing.assert_array_equal(d, e)
                assert d.dtype == e.dtype
        else:
            np.testing.assert_array_equal(decoded, expected)
            assert decoded.dtype == expected.dtype
        offset += 8 + _struct.unpack_from("<II", blob, offset)[1]


def test_stream_reader_rejects_what_it_does_not_support(tmp_path):
    path = str(tmp_path / "v.mat")
    savemat(path, {"x": np.zeros((2, 2))})
    with pytest.raises(mat_stream.MatStreamError, match="no variable 'TestG50'"):
        mat_stream.open_struct(path, "TestG50")
    with pytest.raises(mat_stream.MatStreamError, match="not a struct"):
        mat_stream.open_struct(path, "x")
    with open(path, "r+b") as f:  # claim big-endian
        f.seek(126)
        f.write(b"MI")
    with pytest.raises(mat_stream.MatStreamError, match="little-endian"):
        mat_stream.open_struct(path, "x")


def test_unsupported_files_fall_back_to_loadmat(root, monkeypatch):
    def unsupported(path, key):
        raise mat_stream.MatStreamError("test")

    expected = cuhk_sysu_search_protocol(root, 50)
    cuhk_module._testg.cache_clear()
    cuhk_module._search_protocol.cache_clear()
    monkeypatch.setattr(cuhk_module, "_testg_stream", unsupported)
    again = cuhk_sysu_search_protocol(root, 50)  # built again, now through loadmat
    assert [p["gallery"] for p in again] == [p["gallery"] for p in expected]


def test_malformed_gallery_box_names_the_record(root):
    annotation = os.path.join(root, "annotation")
    write_testg(annotation, 100, [("s3.jpg", loc(10, 20, 30, 40), [("s4.jpg", np.array([[1.0, 2.0, 3.0]]))])])
    with pytest.raises(ValueError, match=r"TestG100\(1\)\.Gallery\(1\)\.idlocate: expected idlocate"):
        cuhk_sysu_search_protocol(root, 100)


def test_protocol_needs_no_images(root):
    shutil.rmtree(os.path.join(root, "Image"))
    assert [p["gallery"][0] for p in cuhk_sysu_search_protocol(root, 50)] == ["s4.jpg", "s3.jpg"]
    assert len(cuhk_sysu_search_protocol(root, -1)) == 2
    with pytest.raises(FileNotFoundError, match=r"image not found: .*s5.jpg"):
        load_cuhk_sysu(root, "gallery")


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    monkeypatch.setenv("PERSON_SEARCH_CACHE", str(folder))
    monkeypatch.setattr(cuhk_module, "CACHE_MIN_BYTES", 0)
    return folder


def _reparse(root, k):
    cuhk_module._testg.cache_clear()
    cuhk_module._search_protocol.cache_clear()
    return cuhk_sysu_search_protocol(root, k)


def test_protocol_cache(root, cache_dir, monkeypatch):
    before = sorted(os.listdir(os.path.join(root, "annotation", "test", "train_test")))
    expected = _reparse(root, 100)
    # TestG100 and TestG50 (its queries are checked against TestG50's), each in its own file
    files = sorted(os.listdir(cache_dir), key=lambda f: "TestG100" not in f)
    assert len(files) == 2 and files[0].startswith("cuhk_sysu_TestG100_") and files[1].startswith("cuhk_sysu_TestG50_")
    assert all(f.endswith(".npz") for f in files)
    assert sorted(os.listdir(os.path.join(root, "annotation", "test", "train_test"))) == before
    with np.load(cache_dir / files[0], allow_pickle=False) as saved:  # plain arrays, no pickled objects
        assert saved["gallery"].dtype == np.int32

    def no_parse(path, key):
        raise AssertionError("parsed although cached")

    with monkeypatch.context() as patch:
        patch.setattr(cuhk_module, "_testg_stream", no_parse)
        patch.setattr(cuhk_module, "_testg_loadmat", no_parse)
        cached = _reparse(root, 100)
    assert [p["gallery"] for p in cached] == [p["gallery"] for p in expected]
    for c, e in zip(cached, expected):
        np.testing.assert_array_equal(c["positive_boxes"], e["positive_boxes"])
        assert c["positive_boxes"].dtype == np.float32
    assert len(load_cuhk_sysu(root, "query")) == 2  # from the cached TestG50
    assert len(os.listdir(cache_dir)) == 2


def test_cache_is_refreshed_when_the_file_changes(root, cache_dir):
    assert _reparse(root, 100)[0]["gallery"] == ["s4.jpg", "s5.jpg", "s6.jpg"]
    annotation = os.path.join(root, "annotation")
    write_testg(annotation, 100, QUERIES)  # the negatives in another order
    path = os.path.join(annotation, "test", "train_test", "TestG100.mat")
    os.utime(path, ns=(os.stat(path).st_atime_ns, os.stat(path).st_mtime_ns + 10 ** 9))
    assert _reparse(root, 100)[0]["gallery"] == ["s4.jpg", "s6.jpg", "s5.jpg"]
    assert len(os.listdir(cache_dir)) == 3  # TestG50, and TestG100 before and after the change


def test_damaged_cache_file_is_ignored(root, cache_dir, caplog):
    expected = _reparse(root, 100)
    (cache_file,) = cache_dir.glob("cuhk_sysu_TestG100_*")
    cache_file.write_bytes(b"not an npz")
    with caplog.at_level(logging.WARNING):
        reparsed = _reparse(root, 100)
    assert "Ignoring unreadable cache file" in caplog.text
    assert [p["gallery"] for p in reparsed] == [p["gallery"] for p in expected]
    with np.load(cache_file, allow_pickle=False) as saved:  # rewritten
        assert saved["num_positive"].tolist() == [1, 1]


def test_cache_location(root, tmp_path, monkeypatch, caplog):
    monkeypatch.delenv("PERSON_SEARCH_CACHE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cuhk_module._cache_dir() == str(tmp_path / "home" / ".cache" / "person_search")
    monkeypatch.setattr(cuhk_module, "CACHE_MIN_BYTES", 0)
    monkeypatch.setenv("PERSON_SEARCH_CACHE", "")  # empty: no cache
    _reparse(root, 50)
    assert not (tmp_path / "home").exists()
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    monkeypatch.setenv("PERSON_SEARCH_CACHE", str(blocker / "cache"))  # cannot be created: warn, still work
    with caplog.at_level(logging.WARNING):
        assert len(_reparse(root, 50)) == 2
    assert "Could not write the protocol cache" in caplog.text
