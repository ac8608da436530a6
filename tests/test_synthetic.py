"""Synthetic dataset generators: file formats as DATASETS_AND_EVAL.md describes them, determinism, identity
consistency, box sanity, output-folder safety, and round trips through the real loaders."""
import importlib.util
import os
import re
from collections import defaultdict

import cv2
import numpy as np
import pytest
import scipy.io

from person_search.data import load_cuhk_sysu, load_prw
from person_search.data.synthetic import (
    MARKER_FILE,
    _cell,
    _savemat,
    _struct,
    check_output_dir,
    generate_cuhk_sysu,
    generate_market1501,
    generate_prw,
)
from person_search.data.synthetic_render import (
    UPPER_COLORS,
    Appearance,
    PersonTraits,
    render_person,
)

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MARKET_NAME = re.compile(r"^([-\d]+)_c(\d)s(\d)_(\d{6})_(\d{2})\.jpg$")


@pytest.fixture(scope="module")
def cuhk(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("synthetic") / "CUHK-SYSU")
    summary = generate_cuhk_sysu(root, preset="tiny", seed=0)
    return root, summary


@pytest.fixture(scope="module")
def prw(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("synthetic") / "PRW")
    summary = generate_prw(root, preset="tiny", seed=0)
    return root, summary


@pytest.fixture(scope="module")
def market(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("synthetic") / "Market-1501-v15.09.15")
    summary = generate_market1501(root, preset="tiny", seed=0)
    return root, summary


def _ann(root, *parts):
    return os.path.join(root, "annotation", *parts)


def _load(path, key):
    return scipy.io.loadmat(path)[key]


def _xywh(idlocate):
    return tuple(int(v) for v in np.asarray(idlocate, np.int64).ravel())


def _image_boxes(root):
    """{image name: [(x, y, w, h), ...]} from Images.mat, read the way the spec says loaders index it."""
    out = {}
    for imname, n_appear, box in _load(_ann(root, "Images.mat"), "Img").squeeze(0):
        boxes = [_xywh(b[0]) for b in box.squeeze(0)]
        assert len(boxes) == int(n_appear[0, 0])
        out[imname[0]] = boxes
    return out


def _mat_arrays(path):
    return {k: v for k, v in scipy.io.loadmat(path).items() if not k.startswith("__")}


def _assert_same_mats(root_a, root_b):
    """Every .mat under root_a holds the same arrays as its twin under root_b (headers carry timestamps)."""
    for dirpath, _, files in os.walk(root_a):
        for f in files:
            if f.endswith(".mat"):
                a = _mat_arrays(os.path.join(dirpath, f))
                b = _mat_arrays(os.path.join(root_b, os.path.relpath(dirpath, root_a), f))
                assert repr(a) == repr(b), f


# ---------------------------------------------------------------------------------------------------------------
# Renderer
# ---------------------------------------------------------------------------------------------------------------
PLAIN_RED = PersonTraits("red", "plain", "navy", "trousers", "black", "short", "medium", "none", "none", 0.36)


@pytest.mark.parametrize("size", [(12, 40), (30, 75), (64, 128), (120, 300)])
def test_person_silhouette_fills_its_box_exactly(size):
    w, h = size
    for traits in (PLAIN_RED, PersonTraits("white", "checks", "khaki", "skirt", "blonde", "long", "light", "bag",
                                           "red", 0.42)):
        bgr, alpha = render_person(traits, w, h, Appearance(stride=0.8, arm_swing=-1.0))
        assert bgr.shape == (h, w, 3) and alpha.shape == (h, w)
        # The ground-truth box is the visible extent: every border row and column holds part of the person.
        assert (alpha[0] > 0).any() and (alpha[-1] > 0).any()
        assert (alpha[:, 0] > 0).any() and (alpha[:, -1] > 0).any()


def test_plain_shirt_has_the_identity_colour_under_neutral_light():
    bgr, alpha = render_person(PLAIN_RED, 60, 160, Appearance())
    chest = bgr[int(160 * 0.3), 30]  # centre of the torso
    assert alpha[int(160 * 0.3), 30] == pytest.approx(1.0)
    np.testing.assert_allclose(chest, UPPER_COLORS["red"], atol=1.0)
    darker, _ = render_person(PLAIN_RED, 60, 160, Appearance(bias=-40.0))
    assert (darker[int(160 * 0.3), 30] < chest).all()


# ---------------------------------------------------------------------------------------------------------------
# CUHK-SYSU
# ---------------------------------------------------------------------------------------------------------------
def test_fast_mat_writer_reads_back_like_scipy_savemat(tmp_path):
    """The generator's MAT writer and scipy.io.savemat produce files that loadmat reads identically."""
    scene = _struct(("imname", "idlocate", "ishard"), [
        (np.array(["s1.jpg"]), np.array([[250, 3, 10, 200]], np.uint8), np.array([[1]], np.uint8)),
        (np.array(["s22.jpg"]), np.array([[300, 7, 40, 90]], np.uint16), np.zeros((0, 0)))])
    variables = {
        "Person": _struct(("idname", "nAppear", "scene"), [(np.array(["p1"]), np.array([[2.0]]), scene)]),
        "pool": _cell([np.array(["s1.jpg"]), np.array(["s22.jpg"])]),
        "ids": np.array([[3, 1, 70000]], np.int32),
    }
    _savemat(str(tmp_path / "ours.mat"), variables)
    scipy.io.savemat(str(tmp_path / "scipy.mat"), variables)
    ours, ref = _mat_arrays(str(tmp_path / "ours.mat")), _mat_arrays(str(tmp_path / "scipy.mat"))
    assert repr(ours) == repr(ref)


def test_cuhk_sysu_layout_and_mat_nesting(cuhk):
    root, summary = cuhk
    assert os.path.isfile(os.path.join(root, MARKER_FILE))
    img = _load(_ann(root, "Images.mat"), "Img")
    assert img.shape == (1, summary.num_images) and img.dtype.names == ("imname", "nAppear", "box")
    box = img[0, 0]["box"]
    assert box.shape[0] == 1 and box.dtype.names == ("idlocate", "ishard")
    dtypes = {b["idlocate"].dtype for b in img["box"][0, 0][0]}
    dtypes |= {b["idlocate"].dtype for rec in img.squeeze(0) for b in rec["box"][0]}
    assert dtypes <= {np.dtype(np.uint8), np.dtype(np.uint16)} and np.dtype(np.uint8) in dtypes
    # The uint8 pitfall is exercised: some uint8 box has x + w > 255.
    assert any(b["idlocate"].dtype == np.uint8 and int(b["idlocate"][0, 0]) + int(b["idlocate"][0, 2]) > 255
               for rec in img.squeeze(0) for b in rec["box"][0])
    names = set(_image_boxes(root))
    assert names == {f"s{i + 1}.jpg" for i in range(summary.num_images)}
    assert all(os.path.isfile(os.path.join(root, "Image", "SSM", n)) for n in names)

    pool = _load(_ann(root, "pool.mat"), "pool")
    assert pool.shape == (56, 1)
    pool_names = [pool.squeeze()[i][0] for i in range(len(pool))]
    assert set(pool_names) <= names and len(set(pool_names)) == 56

    person = _load(_ann(root, "Person.mat"), "Person")
    assert person.shape == (1, 12 + 8) and person.dtype.names == ("idname", "nAppear", "scene")
    assert all(re.fullmatch(r"[a-z]\d+", p["idname"][0]) for p in person.squeeze(0))

    train = _load(_ann(root, "test", "train_test", "Train.mat"), "Train")
    assert train.shape == (12, 1) and train.dtype == object
    item = train.squeeze()[0]
    assert item.shape == (1, 1) and item.dtype.names == ("idname", "nAppear", "scene")
    assert item[0, 0][2].dtype.names == ("imname", "idlocate", "ishard")

    testg = _load(_ann(root, "test", "train_test", "TestG50.mat"), "TestG50")
    assert testg.shape == (1, 8) and testg.dtype.names == ("Query", "Gallery")
    protoc = testg.squeeze()
    assert protoc["Query"][0].shape == (1, 1)
    assert protoc["Query"][0].dtype.names == ("imname", "idlocate", "ishard", "idname")
    assert protoc["Gallery"][0].shape == (1, 50) and protoc["Gallery"][0].dtype.names == ("imname", "idlocate",
                                                                                         "ishard")
    occ = _load(_ann(root, "test", "subset", "Occlusion.mat"), "Occlusion1")
    res = _load(_ann(root, "test", "subset", "Resolution.mat"), "Test_Size")
    assert occ.dtype.names == ("Query", "Gallery", "occlusion") and occ.shape == (1, 1)
    assert res.dtype.names == ("Query", "Gallery") and res.shape == (1, 1)
    assert occ.squeeze(0)[0]["Gallery"].shape == (1, 55)  # min(100, test images - 1)


def test_cuhk_sysu_identities_boxes_and_protocol(cuhk):
    root, _ = cuhk
    boxes = _image_boxes(root)
    pool = {p[0] for p in _load(_ann(root, "pool.mat"), "pool").squeeze()}
    for name, bxs in boxes.items():
        assert bxs, name
        for x, y, w, h in bxs:  # inside the 320x240 image, 40..238 px tall
            assert x >= 0 and y >= 0 and x + w <= 320 and y + h <= 240 and w > 0 and 40 <= h <= 238

    scenes = {}
    for idname, n_appear, scene in _load(_ann(root, "Person.mat"), "Person").squeeze(0):
        recs = [(s[0][0], _xywh(s[1])) for s in scene.squeeze(0)]
        assert len(recs) == int(n_appear[0, 0]) >= 2
        assert all(b in boxes[im] for im, b in recs)  # every sighting is a box of that image
        scenes[idname[0]] = recs
    train_ids = []
    for item in _load(_ann(root, "test", "train_test", "Train.mat"), "Train").squeeze():
        idname, _, scene = item[0, 0]
        assert [(s[0][0], _xywh(s[1])) for s in scene.squeeze(0)] == scenes[idname[0]]
        assert all(im not in pool for im, _ in scenes[idname[0]])  # training identities never in the test pool
        train_ids.append(idname[0])

    protoc = _load(_ann(root, "test", "train_test", "TestG50.mat"), "TestG50").squeeze()
    query_ids = []
    for query, gallery in zip(protoc["Query"], protoc["Gallery"]):
        q_name, q_box, _, idname = query[0, 0]
        query_ids.append(idname[0])
        sightings = scenes[idname[0]]
        assert sightings[0] == (q_name[0], _xywh(q_box))
        entries = [(g[0][0], g[1]) for g in gallery.squeeze(0)]
        n_pos = sum(loc.size > 0 for _, loc in entries)
        assert n_pos >= 1 and all(loc.size > 0 for _, loc in entries[:n_pos])  # positives first
        assert [(n, _xywh(loc)) for n, loc in entries[:n_pos]] == sightings[1:]
        assert all(loc.size == 0 and n not in {s[0] for s in sightings} for n, loc in entries[n_pos:])
        names = [n for n, _ in entries]
        assert len(set(names)) == 50 and set(names) <= pool and q_name[0] not in names
    assert not set(train_ids) & set(query_ids)

    occ = _load(_ann(root, "test", "subset", "Occlusion.mat"), "Occlusion1").squeeze(0)
    res = _load(_ann(root, "test", "subset", "Resolution.mat"), "Test_Size").squeeze(0)
    assert {r["Query"][0, 0]["idname"][0] for r in list(occ) + list(res)} <= set(query_ids)
    low_res = res[0]["Query"][0, 0]["idlocate"]
    assert int(low_res[0, 3]) <= 60


def test_same_identity_looks_alike(cuhk):
    """Colour histograms of the torso region of one identity's crops are closer to each other than to other
    identities' (lighting, pose, scale and occlusion vary between sightings)."""
    root, _ = cuhk
    feats = []
    for idname, _, scene in _load(_ann(root, "Person.mat"), "Person").squeeze(0):
        for s in scene.squeeze(0):
            x, y, w, h = _xywh(s[1])
            torso = (slice(y + h // 5, y + h * 9 // 20), slice(x + w * 7 // 20, x + w * 13 // 20))
            crop = cv2.imread(os.path.join(root, "Image", "SSM", s[0][0]))[torso]
            hsv = cv2.cvtColor(crop, cv2.COLOR_BGR2HSV)
            hist = cv2.calcHist([hsv], [0, 1], None, [12, 4], [0, 180, 0, 256]).ravel()
            feats.append((idname[0], hist / hist.sum()))
    same, diff = [], []
    for i, (a, fa) in enumerate(feats):
        for b, fb in feats[i + 1:]:
            (same if a == b else diff).append(np.abs(fa - fb).sum())
    assert np.mean(same) < 0.85 * np.mean(diff)


def test_cuhk_sysu_is_deterministic_and_independent_of_image_drawing(cuhk, tmp_path):
    root, summary = cuhk
    again = generate_cuhk_sysu(str(tmp_path / "a"), preset="tiny", seed=0, write_images=False)
    assert not os.path.exists(tmp_path / "a" / "Image")
    assert again.num_boxes == summary.num_boxes
    _assert_same_mats(_ann(root), str(tmp_path / "a" / "annotation"))
    other = generate_cuhk_sysu(str(tmp_path / "b"), preset="tiny", seed=1, write_images=False)
    assert other.num_boxes != summary.num_boxes or _image_boxes(str(tmp_path / "b")) != _image_boxes(root)


def test_cuhk_sysu_skips_gallery_sizes_the_test_set_cannot_hold(tmp_path):
    summary = generate_cuhk_sysu(str(tmp_path), preset="tiny", gallery_sizes=(10, 50, 100), write_images=False)
    assert summary.skipped_gallery_sizes == [100]
    listed = sorted(os.listdir(_ann(str(tmp_path), "test", "train_test")))
    assert listed == ["TestG10.mat", "TestG50.mat", "Train.mat"]


def test_cuhk_sysu_reads_back_through_the_loader(cuhk):
    root, _ = cuhk
    train = load_cuhk_sysu(root, "train")
    assert len(train) == 30
    pids = [a["person_id"] for d in train for a in d["annotations"]]
    counts = np.bincount([p for p in pids if p >= 0], minlength=12)
    train_mat = _load(_ann(root, "test", "train_test", "Train.mat"), "Train").squeeze()
    assert counts.tolist() == [int(item[0, 0][1][0, 0]) for item in train_mat]  # pid j = j-th Train entry
    assert -1 in pids

    queries = load_cuhk_sysu(root, "query")
    gallery = load_cuhk_sysu(root, "gallery")
    assert [q["query_id"] for q in queries] == list(range(8))
    assert sum(q["occlusion"] for q in queries) == 1 and sum(q["resolution"] for q in queries) == 1
    boxes_of = defaultdict(list)
    for d in gallery:
        for a in d["annotations"]:
            boxes_of[a["person_id"]].append((d["image_id"], a["bbox"]))
    protoc = _load(_ann(root, "test", "train_test", "TestG50.mat"), "TestG50").squeeze()
    for q, gal in zip(queries, protoc["Gallery"]):
        n_pos = sum(g[1].size > 0 for g in gal.squeeze(0))
        # the query's own box and each positive gallery box carry the query index
        assert len(boxes_of[q["person_id"]]) == n_pos + 1
        assert (q["image_id"], q["query_box"]) in boxes_of[q["person_id"]]


# ---------------------------------------------------------------------------------------------------------------
# PRW
# ---------------------------------------------------------------------------------------------------------------
def _prw_annotations(root):
    out = {}
    for f in os.listdir(os.path.join(root, "annotations")):
        arrays = _mat_arrays(os.path.join(root, "annotations", f))
        assert len(arrays) == 1, f
        (key, rows), = arrays.items()
        out[f[:-len(".jpg.mat")]] = (key, rows)
    return out


def test_prw_files(prw):
    root, summary = prw
    train = _load(os.path.join(root, "frame_train.mat"), "img_index_train")
    test = _load(os.path.join(root, "frame_test.mat"), "img_index_test")
    assert train.shape == (30, 1) and test.shape == (30, 1)
    test_frames = {t[0][0] for t in test}
    frames = {t[0][0] for t in train} | test_frames
    assert all(re.fullmatch(r"c[1-6]s\d_\d{6}", f) for f in frames)
    assert {int(f[1]) for f in test_frames} == set(range(1, 7))
    assert all(os.path.isfile(os.path.join(root, "frames", f + ".jpg")) for f in frames)

    anns = _prw_annotations(root)
    assert set(anns) == frames
    assert {k for k, _ in anns.values()} == {"box_new", "anno_file", "anno_previous"}
    rows = np.concatenate([r for _, r in anns.values()])
    assert rows.dtype == np.float64 and rows.shape[1] == 5
    assert (rows[:, 0] == -2).any() and (rows[:, 1:3] < 0).any() and (rows[:, 1:3] > -3).all()

    id_train = _load(os.path.join(root, "ID_train.mat"), "ID_train")
    id_test = _load(os.path.join(root, "ID_test.mat"), "ID_test2")
    assert id_train.shape == (1, 8) and id_test.shape == (1, 6)
    all_ids = np.concatenate([id_train.ravel(), id_test.ravel()]).astype(int)
    assert len(set(all_ids)) == 14 and all_ids.max() > 14  # raw pids are not contiguous
    assert (np.diff(id_train.ravel()) > 0).all()

    with open(os.path.join(root, "query_info.txt"), "rb") as f:
        raw = f.read().decode()
    lines = raw.split("\r\n")
    assert lines[-1] == "" and len(lines) - 1 == summary.num_queries and "\n" not in raw.replace("\r\n", "")
    float4 = r"-?\d+\.\d{4}"
    where = defaultdict(set)
    for f, (_, r) in anns.items():
        for pid in r[:, 0]:
            where[int(pid)].add(f)
    for line in lines[:-1]:
        assert re.fullmatch(rf"\d+ {float4} {float4} {float4} {float4} c\d+s\d+_\d{{6}}", line), line
        pid, *box, frame = line.split(" ")
        assert int(pid) in id_test.ravel() and frame in test_frames
        row = anns[frame][1][anns[frame][1][:, 0] == int(pid)][0]
        np.testing.assert_allclose(row[1:], [float(v) for v in box])
        others = {f for f in where[int(pid)] if f != frame and f in test_frames}
        assert any(f[1] != frame[1] for f in others), "query person must be seen by another camera"
        crop = cv2.imread(os.path.join(root, "query_box", f"{pid}_{frame}.jpg"))
        assert crop is not None and crop.shape[0] == pytest.approx(row[2] + row[4] - max(row[2], 0), abs=1.5)


def test_prw_is_deterministic(prw, tmp_path):
    root, _ = prw
    generate_prw(str(tmp_path), preset="tiny", seed=0, num_train_frames=None)
    _assert_same_mats(root, str(tmp_path))
    for sub in ("frames", "query_box"):
        for f in os.listdir(os.path.join(root, sub)):
            with open(os.path.join(root, sub, f), "rb") as a, open(os.path.join(tmp_path, sub, f), "rb") as b:
                assert a.read() == b.read(), f
    with open(os.path.join(root, "query_info.txt"), "rb") as a, open(tmp_path / "query_info.txt", "rb") as b:
        assert a.read() == b.read()


def test_prw_reads_back_through_the_loader(prw):
    root, _ = prw
    train = load_prw(root, "train")
    pids = {a["person_id"] for d in train for a in d["annotations"]}
    assert pids == set(range(-1, 8))  # remapped through ID_train.mat, -1 unlabeled
    gallery = load_prw(root, "gallery")
    queries = load_prw(root, "query")
    frames_of = defaultdict(set)
    for d in gallery:
        for a in d["annotations"]:
            frames_of[a["person_id"]].add((d["image_id"], d["camera_id"]))
    id_test = set(_load(os.path.join(root, "ID_test.mat"), "ID_test2").ravel().astype(int))
    for q in queries:
        assert q["person_id"] in id_test
        assert (q["image_id"], q["camera_id"]) in frames_of[q["person_id"]]
        assert any(cam != q["camera_id"] for _, cam in frames_of[q["person_id"]])


# ---------------------------------------------------------------------------------------------------------------
# Market-1501
# ---------------------------------------------------------------------------------------------------------------
def test_market1501_naming_and_protocol(market):
    root, summary = market
    parsed = {}
    for sub in ("bounding_box_train", "bounding_box_test", "query"):
        names = sorted(os.listdir(os.path.join(root, sub)))
        assert names
        parsed[sub] = []
        for n in names:
            m = MARKET_NAME.match(n)
            assert m, n
            assert re.search(r"([-\d]+)_c(\d)", n).groups() == m.groups()[:2]
            assert cv2.imread(os.path.join(root, sub, n)).shape == (128, 64, 3)
            parsed[sub].append((int(m.group(1)), int(m.group(2))))
    train_pids = {p for p, _ in parsed["bounding_box_train"]}
    test_pids = {p for p, _ in parsed["bounding_box_test"]}
    assert len(train_pids) == 6 and not train_pids & (test_pids | {p for p, _ in parsed["query"]})
    assert 0 in test_pids and -1 in test_pids and min(train_pids) > 0
    queries = parsed["query"]
    assert len(queries) == len(set(queries)) == summary.num_queries  # one query per identity per camera
    assert {p for p, _ in queries} == test_pids - {0, -1}
    for pid, cam in queries:
        assert any(p == pid and c != cam for p, c in parsed["bounding_box_test"])


# ---------------------------------------------------------------------------------------------------------------
# Output folder safety and the CLI
# ---------------------------------------------------------------------------------------------------------------
def test_refuses_foreign_folders_and_replaces_previous_synthetic_output(tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    (real / "Image").mkdir()
    with pytest.raises(FileExistsError, match="real dataset"):
        check_output_dir(str(real))
    assert os.path.isdir(real / "Image")

    out = tmp_path / "synthetic"
    generate_cuhk_sysu(str(out), preset="tiny", write_images=False, gallery_sizes=(10,))
    (out / "notes.txt").write_text("mine")
    generate_cuhk_sysu(str(out), preset="tiny", write_images=False, gallery_sizes=(20,))
    assert sorted(os.listdir(out / "annotation" / "test" / "train_test")) == ["TestG20.mat", "Train.mat"]
    assert (out / "notes.txt").read_text() == "mine"  # only the generator's own outputs are replaced


def _cli():
    spec = importlib.util.spec_from_file_location("prepare_synthetic",
                                                  os.path.join(REPO_ROOT, "datasets", "prepare_synthetic.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cli(tmp_path, capsys, monkeypatch):
    cli = _cli()
    out = tmp_path / "PRW"
    assert cli.main(["--format", "prw", "--preset", "tiny", "--output", str(out), "--no-images",
                     "--num-test-ids", "4"]) == 0
    assert _load(os.path.join(out, "ID_test.mat"), "ID_test2").shape == (1, 4)
    assert not os.path.exists(out / "frames")
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "x").write_text("")
    assert cli.main(["--format", "cuhk_sysu", "--preset", "tiny", "--output", str(foreign)]) == 2
    assert "refusing" in capsys.readouterr().err
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path / "datasets"))  # default: the synthetic_prw_* folder
    assert cli.main(["--format", "prw", "--preset", "tiny", "--no-images"]) == 0
    assert os.path.isfile(tmp_path / "datasets" / "synthetic" / "PRW" / "ID_test.mat")
    with pytest.raises(SystemExit, match="does not apply|do\\(es\\) not apply"):
        cli.main(["--format", "market1501", "--preset", "tiny", "--output", str(tmp_path / "m"), "--no-images"])
