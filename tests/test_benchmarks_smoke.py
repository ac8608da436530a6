"""The benchmark scripts run end to end at tiny scale and print parseable JSON lines (no timing assertions)."""
import json
import os
import subprocess
import sys

from conftest import REPO_ROOT, TINY_CONFIG

BENCHMARKS = os.path.join(REPO_ROOT, "benchmarks")


def run_script(name, *args, timeout=120):
    env = dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, os.path.join(BENCHMARKS, name), *args], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    assert lines, proc.stderr[-3000:]
    return [json.loads(line) for line in lines]


def test_model_speed_tiny():
    records = run_script("model_speed.py", "--device", "cpu", "--config", TINY_CONFIG, "--height", "64", "--width",
                         "96", "--batch", "2", "--iters", "1", "--warmup", "0", "--threads", "1", "--rounds", "1",
                         "--check")
    for r in records:
        assert {"name", "device", "config", "value", "unit", "bare_value", "machine"} <= set(r), r
        assert r["device"] == "cpu" and r["config"].endswith("oim_tiny_C4_cpu_instant_test.yaml")
        assert r["roi_heads"] == "ReIDRes5ROIHeads" and r["bare_roi_heads"] == "Res5ROIHeads"
        assert r["embed_detections_from"] == "boxes" and r["overrides"] == [] and not r["channels_last"]
    by_name = {}
    for r in records:
        by_name.setdefault(r["name"], []).append(r)
    # train: fp32 and bf16; inference: batch 1 and 2 in each precision; query: each precision; two checks
    assert {(r["precision"]) for r in by_name["train.throughput"]} == {"fp32", "bf16"}
    assert len(by_name["train.peak_memory"]) == 2
    assert all(r["memory_source"].startswith("ru_maxrss") for r in by_name["train.peak_memory"])
    assert {(r["precision"], r["batch"]) for r in by_name["inference.throughput"]} == {
        (p, b) for p in ("fp32", "bf16") for b in (1, 2)}
    assert len(by_name["inference.peak_memory"]) == 4
    assert {r["precision"] for r in by_name["query_embedding.throughput"]} == {"fp32", "bf16"}
    for name in ("train.throughput", "inference.throughput", "query_embedding.throughput", "train.peak_memory"):
        for r in by_name[name]:
            assert r["value"] > 0 and r["bare_value"] > 0
    (det_check,) = by_name["check.detection_embeddings.max_abs_diff"]
    (query_check,) = by_name["check.query_embeddings.max_abs_diff"]
    assert query_check["queries"] == 2 and query_check["value"] >= 0
    assert isinstance(query_check["within_tolerance"], bool)
    assert det_check["fp32_detections"] > 0
    # the check runs first, on the model as built, whatever else is measured
    assert [r["name"] for r in records[:2]] == ["check.detection_embeddings.max_abs_diff",
                                                "check.query_embeddings.max_abs_diff"]


def test_model_speed_fpn_channels_last():
    # the FPN variant maps to StandardROIHeads; one inference measurement and the check are enough
    fpn = os.path.join(REPO_ROOT, "configs", "quick_schedules", "oim_tiny_FPN_cpu_instant_test.yaml")
    records = run_script("model_speed.py", "--device", "cpu", "--config", fpn, "--height", "64", "--width", "96",
                         "--batch", "1", "--iters", "1", "--warmup", "0", "--threads", "1", "--precisions", "fp32",
                         "--benchmarks", "inference", "--rounds", "1", "--channels-last", "--check")
    assert [r["name"] for r in records] == ["check.detection_embeddings.max_abs_diff",
                                            "check.query_embeddings.max_abs_diff",
                                            "inference.throughput", "inference.peak_memory"]
    assert records[2]["roi_heads"] == "ReIDStandardROIHeads" and records[2]["bare_roi_heads"] == "StandardROIHeads"
    assert all(r["channels_last"] for r in records)
    assert records[1]["precision"] == "bf16 channels-last vs fp32" and records[1]["within_tolerance"]
    assert records[1]["min_cosine"] >= records[1]["min_cosine_required"] == 0.99


def test_model_speed_records_config_overrides_fp16():
    overrides = ["MODEL.REID.EMBED_DETECTIONS_FROM", "proposals", "MODEL.CHANNELS_LAST", "True"]
    records = run_script("model_speed.py", "--device", "cpu", "--config", TINY_CONFIG, "--height", "64", "--width",
                         "96", "--batch", "1", "--iters", "1", "--warmup", "0", "--threads", "1", "--precisions",
                         "fp16", "--benchmarks", "train,inference", "--rounds", "2", *overrides)
    assert [r["name"] for r in records] == ["train.throughput", "train.peak_memory",
                                            "inference.throughput", "inference.peak_memory"]
    for r in records:
        assert r["precision"] == "fp16" and r["value"] > 0 and r["bare_value"] > 0
        assert r["embed_detections_from"] == "proposals" and r["channels_last"] and r["overrides"] == overrides
        # two rounds, alternating which model goes first: medians, and each round's ratio
        assert r["rounds"] == 2 and len(r["round_ratios"]) == 2 and all(x > 0 for x in r["round_ratios"])


def test_index_speed_tiny():
    records = run_script("index_speed.py", "--sizes", "500,2000", "--queries", "8", "--single-queries", "3",
                         "--repeat", "1", "--topk", "10")
    assert [(r["name"], r["config"]["boxes"]) for r in records] == [
        (name, size) for size in (500, 2000)
        for name in ("index.build", "index.query_latency", "index.query_latency")]
    for r in records:
        assert {"name", "device", "config", "value", "unit", "baseline", "baseline_value", "machine"} <= set(r)
        assert r["baseline"] == "numpy" and r["baseline_value"] >= 0
        if r["faiss_available"]:
            assert r["value"] is not None
            if r["name"] == "index.query_latency":
                assert r["topk_agree"] > 0.5  # both are exact: only float near-ties may reorder
        else:
            assert r["value"] is None
    assert [r["batch"] for r in records if r["name"] == "index.query_latency"] == [1, 8, 1, 8]


def test_eval_speed_small():
    # the existing evaluation benchmark (CUHK-SYSU gallery 100 needs more than 100 synthetic images: scale >= 0.02)
    records = run_script("eval_speed.py", "--scale", "0.02")
    names = {r["name"] for r in records}
    assert {"cuhk_sysu.g100.evaluate", "cuhk_sysu.g-1.evaluate", "prw.all_cameras.evaluate",
            "prw.cross_camera.evaluate"} <= names
    assert all({"name", "value", "unit"} <= set(r) for r in records)


def test_gpu_suite_exits_non_zero_after_a_failed_or_unknown_run(tmp_path):
    # a working directory like the repository's without .whl/ (the suite would install those wheels); ITERS=x makes
    # model_speed.py refuse its arguments, so the known run fails on any machine
    for name in ("benchmarks", "configs", "person_search"):
        os.symlink(os.path.join(REPO_ROOT, name), tmp_path / name)
    env = dict(os.environ, OUT_DIR=str(tmp_path / "out"), RUNS="bogus c4_600x1000", ITERS="x",
               PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])  # python3: this Python
    proc = subprocess.run(["bash", os.path.join(BENCHMARKS, "gpu_suite.sh")], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "!! unknown run bogus" in proc.stderr and "== c4_600x1000" in proc.stderr  # the next run still ran
    assert "!! c4_600x1000 failed" in proc.stderr and "failed or unknown runs: bogus c4_600x1000" in proc.stderr
