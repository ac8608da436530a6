"""Crop re-ID metrics (CMC / mAP / mINP, CUHK03 single-gallery-shot) and ReIDEvaluator on hand-computed cases."""
import itertools
import json
import uuid

import numpy as np
import pytest
import torch

import person_search  # noqa: F401
from detectron2.data import DatasetCatalog, MetadataCatalog

from person_search.evaluation import ReIDEvaluator
from person_search.evaluation import reid_evaluation
from person_search.evaluation.reid_evaluation import evaluate_reid, evaluate_reid_distances

# Case A. Gallery crops (pid, camera): g0 (1, 0), g1 (2, 1), g2 (1, 1), g3 (0, 1) distractor, g4 (1, 2), g5 (3, 0).
G_PIDS = np.array([1, 2, 1, 0, 1, 3])
G_CAMS = np.array([0, 1, 1, 1, 2, 0])
# q0 (pid 1, cam 0): g0 is removed (same pid, same camera); kept ranking g1 g2 g3 g4 g5 -> matches at ranks 2, 4:
#     AP = (1/2 + 2/4) / 2 = 0.5, INP = 2 / 4 = 0.5, first match at rank 2.
# q1 (pid 3, cam 1): g5 (camera 0) is nearest: AP = 1, INP = 1, first match at rank 1.
# q2 (pid 2, cam 1): its only gallery crop g1 is from camera 1 -> removed -> no match -> skipped.
# q3 (pid 4): not in the gallery -> skipped.
Q_PIDS = np.array([1, 3, 2, 4])
Q_CAMS = np.array([0, 1, 1, 0])
DIST_A = np.array(
    [
        [0.1, 0.2, 0.3, 0.4, 0.5, 0.6],
        [0.9, 0.8, 0.7, 0.6, 0.5, 0.1],
        [0.5, 0.1, 0.2, 0.3, 0.4, 0.6],
        [0.1, 0.2, 0.3, 0.4, 0.5, 0.6],
    ]
)


def test_hand_computed_removal_skipping_and_distractors():
    r = evaluate_reid_distances(DIST_A, Q_PIDS, G_PIDS, Q_CAMS, G_CAMS)
    assert r["num_queries"] == 4 and r["num_valid_queries"] == 2
    assert r["mAP"] == pytest.approx((0.5 + 1.0) / 2)
    assert r["mINP"] == pytest.approx((0.5 + 1.0) / 2)
    assert r["cmc"][0] == pytest.approx(0.5)  # q1 at rank 1, q0 at rank 2
    assert r["cmc"][1] == pytest.approx(1.0)
    assert r["cmc"].shape == (50,) and np.all(r["cmc"][1:] == 1.0)


def test_ties_keep_gallery_order():
    # query (pid 1, cam 0); g0 (2, 1) at 0.5, g1 (1, 1) at 0.5, g2 (1, 1) at 0.2.
    # ranking g2, g0, g1 (the tie keeps gallery order): matches at 1 and 3 -> AP = (1 + 2/3) / 2 = 5/6, INP = 2/3.
    dist = np.array([[0.5, 0.5, 0.2]])
    r = evaluate_reid_distances(dist, [1], [2, 1, 1], [0], [1, 1, 1])
    assert r["mAP"] == pytest.approx(5 / 6)
    assert r["mINP"] == pytest.approx(2 / 3)
    # the same crops with the match listed first: ranking g2, g1, g0 -> AP = (1 + 1) / 2 = 1, INP = 1.
    r = evaluate_reid_distances(dist, [1], [1, 2, 1], [0], [1, 1, 1])
    assert r["mAP"] == pytest.approx(1.0)
    assert r["mINP"] == pytest.approx(1.0)


def test_no_valid_query_is_an_error():
    with pytest.raises(ValueError, match="none of the 1 queries"):
        evaluate_reid_distances([[0.1, 0.2]], [1], [1, 2], [0], [0, 1])


def test_bad_ids_are_an_error():
    with pytest.raises(ValueError, match="g_pids"):
        evaluate_reid_distances([[0.1, 0.2]], [1], [1.0, 2.0], [0], [0, 1])
    with pytest.raises(ValueError, match="row 1"):
        evaluate_reid(np.ones((2, 3)) * [[1], [0]], np.ones((2, 3)), [1, 2], [1, 2], [0, 0], [1, 1])


def _reference(distmat, q_pids, g_pids, q_cams, g_cams, max_rank=50):
    """Plain per-query loop of the protocol, written independently of the vectorised code."""
    aps, inps, cmcs = [], [], []
    for i in range(len(q_pids)):
        order = sorted(range(len(g_pids)), key=lambda j: (distmat[i][j], j))
        kept = [j for j in order if not (g_pids[j] == q_pids[i] and g_cams[j] == q_cams[i])]
        matches = [g_pids[j] == q_pids[i] for j in kept]
        if not any(matches):
            continue
        hit_ranks = [r + 1 for r, m in enumerate(matches) if m]
        aps.append(np.mean([(n + 1) / r for n, r in enumerate(hit_ranks)]))
        inps.append(len(hit_ranks) / hit_ranks[-1])
        cmcs.append([1.0 if hit_ranks[0] <= k else 0.0 for k in range(1, max_rank + 1)])
    return np.mean(aps), np.mean(inps), np.mean(cmcs, axis=0)


def test_vectorised_equals_plain_loop_across_chunks(monkeypatch):
    rng = np.random.default_rng(0)
    num_q, num_g = 23, 41
    dist = rng.integers(0, 6, size=(num_q, num_g)) / 5.0  # many ties
    q_pids, g_pids = rng.integers(0, 5, num_q), rng.integers(0, 5, num_g)
    q_cams, g_cams = rng.integers(0, 3, num_q), rng.integers(0, 3, num_g)
    m_ap, m_inp, cmc = _reference(dist, q_pids, g_pids, q_cams, g_cams)
    for entries in (1 << 21, 100):  # one chunk, then chunks of 2 queries
        monkeypatch.setattr(reid_evaluation, "_CHUNK_ENTRIES", entries)
        r = evaluate_reid_distances(dist, q_pids, g_pids, q_cams, g_cams)
        assert r["mAP"] == pytest.approx(m_ap)
        assert r["mINP"] == pytest.approx(m_inp)
        np.testing.assert_allclose(r["cmc"], cmc)


def test_features_use_cosine_distance():
    rng = np.random.default_rng(1)
    q, g = rng.normal(size=(7, 4)), rng.normal(size=(19, 4))
    ids = rng.integers(0, 3, 7), rng.integers(0, 3, 19), rng.integers(0, 2, 7), rng.integers(0, 2, 19)
    qn = q / np.linalg.norm(q, axis=1, keepdims=True)
    gn = g / np.linalg.norm(g, axis=1, keepdims=True)
    by_features = evaluate_reid(3.0 * q, g, *ids)  # scale does not matter: features are normalised
    by_distance = evaluate_reid_distances(1.0 - qn @ gn.T, *ids)
    assert by_features["mAP"] == pytest.approx(by_distance["mAP"])
    np.testing.assert_allclose(by_features["cmc"], by_distance["cmc"])


def test_single_gallery_shot():
    # query (pid 1, cam 0); gallery g0 (2, 1) 0.1, g1 (1, 1) 0.2, g2 (1, 1) 0.3, g3 (2, 1) 0.4.
    # A sampled gallery holds one pid-1 crop and one pid-2 crop; the match is at rank 1 exactly when g3 is the pid-2
    # crop ((g1, g3): g1 first; (g2, g3): 0.3 < 0.4), else rank 2: expected rank-1 = 1/2, rank-2 = 1.
    # AP stays on the full list: matches at ranks 2, 3 -> (1/2 + 2/3) / 2 = 7/12; INP = 2/3.
    args = ([[0.1, 0.2, 0.3, 0.4]], [1], [2, 1, 1, 2], [0], [1, 1, 1, 1])
    r = evaluate_reid_distances(*args, single_gallery_shot=True, num_repeats=4000, seed=3)
    assert abs(r["cmc"][0] - 0.5) < 0.03  # 4000 fair coin flips: standard deviation 0.008
    assert r["cmc"][1] == 1.0
    assert r["mAP"] == pytest.approx(7 / 12)
    assert r["mINP"] == pytest.approx(2 / 3)
    ten = evaluate_reid_distances(*args, single_gallery_shot=True, num_repeats=10, seed=3)
    assert ten["cmc"][0] * 10 == pytest.approx(round(ten["cmc"][0] * 10))  # an average of 10 repeats
    again = evaluate_reid_distances(*args, single_gallery_shot=True, num_repeats=10, seed=3)
    np.testing.assert_array_equal(ten["cmc"], again["cmc"])


def test_single_gallery_shot_with_one_crop_per_identity_is_the_standard_cmc(monkeypatch):
    # every identity has one kept crop per query, so every sampled gallery is the whole kept gallery
    rng = np.random.default_rng(2)
    dist = rng.random((9, 6))
    q_pids, g_pids = rng.integers(0, 6, 9), np.arange(6)
    q_cams, g_cams = np.zeros(9, int), np.ones(6, int)
    standard = evaluate_reid_distances(dist, q_pids, g_pids, q_cams, g_cams)
    monkeypatch.setattr(reid_evaluation, "_CHUNK_ENTRIES", 12)  # chunks of 2 queries
    shot = evaluate_reid_distances(dist, q_pids, g_pids, q_cams, g_cams, single_gallery_shot=True)
    np.testing.assert_allclose(shot["cmc"], standard["cmc"])


def test_single_gallery_shot_does_not_depend_on_chunking(monkeypatch):
    rng = np.random.default_rng(4)
    args = (rng.random((10, 30)), rng.integers(0, 4, 10), rng.integers(0, 4, 30), rng.integers(0, 2, 10),
            rng.integers(0, 2, 30))
    whole = evaluate_reid_distances(*args, single_gallery_shot=True)
    monkeypatch.setattr(reid_evaluation, "_CHUNK_ENTRIES", 60)  # chunks of 2 queries
    chunked = evaluate_reid_distances(*args, single_gallery_shot=True)
    np.testing.assert_array_equal(whole["cmc"], chunked["cmc"])


# ----------------------------------------------------------------------------------------------- ReIDEvaluator


def _angle_embedding(distance):
    """A unit 2-d vector whose cosine distance to (1, 0) is ``distance``."""
    angle = np.arccos(1.0 - distance)
    return torch.tensor([np.cos(angle), np.sin(angle)], dtype=torch.float32)


@pytest.fixture
def case_a_datasets():
    """Case A registered as query / gallery datasets whose embeddings reproduce DIST_A's first two rows."""
    prefix = f"test_reid_{uuid.uuid4().hex[:8]}"
    query = [
        {"image_id": f"q{i}.jpg", "person_id": int(p), "camera_id": int(c), "reid_split": "query"}
        for i, (p, c) in enumerate(zip(Q_PIDS, Q_CAMS))
    ]
    gallery = [
        {"image_id": f"g{j}.jpg", "person_id": int(p), "camera_id": int(c), "reid_split": "gallery"}
        for j, (p, c) in enumerate(zip(G_PIDS, G_CAMS))
    ]
    DatasetCatalog.register(prefix + "_query", lambda: [dict(d) for d in query])
    DatasetCatalog.register(prefix + "_gallery", lambda: [dict(d) for d in gallery])
    MetadataCatalog.get(prefix + "_query").set(evaluator_type="reid", gallery_dataset=prefix + "_gallery")
    MetadataCatalog.get(prefix + "_gallery").set(evaluator_type="reid", query_dataset=prefix + "_query")
    # q0 at (1, 0): gallery crop j at cosine distance DIST_A[0, j]. q2, q3 have no valid match whatever their
    # embedding.
    g_emb = [_angle_embedding(d) for d in DIST_A[0]]
    # q1 (pid 3) only needs g5 (pid 3's only crop, camera 0) nearest: it sits exactly on g5's embedding.
    q_emb = [torch.tensor([1.0, 0.0]), g_emb[5].clone(), torch.tensor([0.0, 1.0]), torch.tensor([1.0, 0.0])]
    yield prefix, query, gallery, q_emb, g_emb
    for name in (prefix + "_query", prefix + "_gallery"):
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def test_evaluator_hand_computed(case_a_datasets, tmp_path):
    prefix, query, gallery, q_emb, g_emb = case_a_datasets
    evaluator = ReIDEvaluator(prefix + "_query", prefix + "_gallery", output_dir=str(tmp_path / "inference"))
    evaluator.reset()
    records = list(zip(query, q_emb)) + list(zip(gallery, g_emb))
    order = [7, 0, 9, 3, 1, 8, 5, 2, 4, 6]  # mixed query / gallery order, two batches
    for batch in (order[:4], order[4:]):
        evaluator.process([records[i][0] for i in batch], [{"embedding": records[i][1]} for i in batch])
    result = evaluator.evaluate()["reid"]
    # q0: AP 0.5, INP 0.5, first match at rank 2; q1: g5 at distance 0 -> rank 1, AP 1, INP 1; q2, q3 skipped.
    # In percent over the 2 valid queries.
    assert result["mAP"] == pytest.approx(75.0, abs=1e-4)
    assert result["mINP"] == pytest.approx(75.0, abs=1e-4)
    assert result["rank1"] == pytest.approx(50.0)
    assert result["rank5"] == pytest.approx(100.0)
    assert result["rank10"] == pytest.approx(100.0)
    assert list(result) == ["mAP", "rank1", "rank5", "rank10", "mINP"]
    saved = json.loads((tmp_path / "inference" / "reid_results.json").read_text())
    assert saved["results"]["reid"] == pytest.approx(result)
    assert (saved["query_dataset"], saved["gallery_dataset"]) == (prefix + "_query", prefix + "_gallery")
    assert (saved["num_queries"], saved["num_valid_queries"], saved["cuhk03_single_gallery_shot"]) == (4, 2, False)


def test_evaluator_checks_completeness(case_a_datasets):
    prefix, query, gallery, q_emb, g_emb = case_a_datasets
    evaluator = ReIDEvaluator(prefix + "_query", prefix + "_gallery")
    evaluator.process(query, [{"embedding": e} for e in q_emb])
    evaluator.process(gallery[:-1], [{"embedding": e} for e in g_emb[:-1]])
    with pytest.raises(ValueError, match="1 crops of .* were never processed, e.g. 'g5.jpg'"):
        evaluator.evaluate()
    evaluator.process(gallery[-1:], [{"embedding": g_emb[-1]}])
    evaluator.process(gallery[:1], [{"embedding": g_emb[0]}])
    with pytest.raises(ValueError, match="'g0.jpg' of .* was processed twice"):
        evaluator.evaluate()
    evaluator.reset()
    with pytest.raises(ValueError, match="reid_split"):
        evaluator.process([{"image_id": "x.jpg"}], [{"embedding": g_emb[0]}])
    with pytest.raises(KeyError, match="the output for 'g0.jpg' has no 'embedding'"):
        evaluator.process(gallery[:1], [{"loss_reid": g_emb[0]}])


def test_evaluator_single_gallery_shot_matches_function(case_a_datasets):
    prefix, query, gallery, q_emb, g_emb = case_a_datasets
    evaluator = ReIDEvaluator(prefix + "_query", prefix + "_gallery", cuhk03_single_gallery_shot=True, seed=5)
    for records, embeddings in ((query, q_emb), (gallery, g_emb)):
        evaluator.process(records, [{"embedding": e} for e in embeddings])
    result = evaluator.evaluate()["reid"]
    expected = evaluate_reid(
        torch.stack(q_emb).numpy(), torch.stack(g_emb).numpy(), Q_PIDS, G_PIDS, Q_CAMS, G_CAMS,
        single_gallery_shot=True, seed=5,
    )
    assert result["rank1"] == pytest.approx(100.0 * expected["cmc"][0])
    assert result["mAP"] == pytest.approx(100.0 * expected["mAP"])



def test_single_gallery_shot_distribution_matches_enumeration():
    # Expected single-shot CMC by enumerating every gallery of one kept crop per identity, against 10,000 repeats.
    rng = np.random.default_rng(6)
    g_pids, g_cams = np.array([1, 1, 1, 2, 2, 3, 3, 3]), np.array([0, 1, 1, 0, 1, 0, 1, 1])
    q_pids, q_cams = np.array([1, 2, 3]), np.array([0, 1, 1])
    dist = rng.integers(0, 4, size=(3, 8)) / 4.0  # with ties
    expected = []
    for q in range(3):
        kept = [j for j in range(8) if not (g_pids[j] == q_pids[q] and g_cams[j] == q_cams[q])]
        groups = [[j for j in kept if g_pids[j] == p] for p in (1, 2, 3)]
        ranks = []
        for combo in itertools.product(*groups):
            ranked = sorted(combo, key=lambda j: (dist[q, j], j))
            ranks.append(next(r for r, j in enumerate(ranked, 1) if g_pids[j] == q_pids[q]))
        expected.append([np.mean([r <= k for r in ranks]) for k in (1, 2, 3)])
    r = evaluate_reid_distances(dist, q_pids, g_pids, q_cams, g_cams, single_gallery_shot=True, num_repeats=10000)
    np.testing.assert_allclose(r["cmc"][:3], np.mean(expected, axis=0), atol=0.015)
