"""The person-search command as a user runs it: demo end to end (tiny), evaluate, and their errors."""
import json
import os
import subprocess
import sys

import pytest

from conftest import REPO_ROOT


def run_cli(*args, cwd, env=None):
    return subprocess.run(
        [sys.executable, "-m", "person_search.cli", *args], cwd=cwd, env=env, capture_output=True, text=True
    )


def test_demo_end_to_end_on_a_tiny_synthetic_set(tmp_path):
    env = dict(os.environ, DETECTRON2_DATASETS=str(tmp_path / "datasets"), PYTHONPATH=REPO_ROOT)
    small = ["MODEL.REID.OIM.NUM_LABELED", "12", "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0",
             "TEST.PERSON_SEARCH.DET_THRESH", "0.0", "INPUT.MIN_SIZE_TRAIN", "(96,)", "INPUT.MAX_SIZE_TRAIN", "128",
             "INPUT.MIN_SIZE_TEST", "96", "INPUT.MAX_SIZE_TEST", "128"]
    out = run_cli("demo", "--preset", "tiny", "--output", "demo_out", "--opts", "SOLVER.MAX_ITER", "2", *small,
                  cwd=tmp_path, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "untrained" in out.stdout and "result picture" in out.stdout
    assert os.path.exists(tmp_path / "datasets" / "synthetic" / "CUHK-SYSU" / "annotation" / "Images.mat")
    summary = json.loads((tmp_path / "demo_out" / "summary.json").read_text())
    for name in ("untrained", "trained"):
        assert set(summary[name]) == {"detection", "search"}
        assert 0.0 <= summary[name]["search"]["mAP"] <= 100.0
    assert os.path.exists(summary["result_picture"]) and os.path.exists(summary["result_json"])
    assert summary["top_hits"] and summary["top_hits"][0]["rank"] == 1
    weights = tmp_path / "demo_out" / "train" / "model_final.pth"
    assert os.path.exists(weights)

    # the trained weights evaluated again, in bf16 with 2 images per batch: metrics close to the demo's fp32 ones
    demo_config = os.path.join(REPO_ROOT, "configs", "Synthetic", "oim_tiny_C4_synthetic_demo.yaml")
    out = run_cli("evaluate", "--config", demo_config, "--weights", str(weights), "--precision", "bf16",
                  "--batch-size", "2", "--output", "eval_out", "--opts", *small, cwd=tmp_path, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    (results,) = json.loads(out.stdout[out.stdout.rindex("\n{\n") + 1:]).values()  # logs come first
    for key, value in summary["trained"]["search"].items():
        assert abs(results["search"][key] - value) <= 10.0, key
    assert os.path.exists(tmp_path / "eval_out" / "inference" / "synthetic_cuhk_sysu_gallery"
                          / "person_search_results.json")


def test_evaluate_refuses_a_missing_weights_file(tmp_path):
    config = os.path.join(REPO_ROOT, "configs", "quick_schedules", "oim_tiny_C4_cpu_instant_test.yaml")
    out = run_cli("evaluate", "--config", config, "--weights", str(tmp_path / "nope.pth"), cwd=tmp_path)
    assert out.returncode == 2
    assert "nope.pth does not exist" in out.stderr
    weights = tmp_path / "model.pth"
    weights.write_bytes(b"")
    out = run_cli("evaluate", "--config", str(tmp_path / "nope.yaml"), "--weights", str(weights), cwd=tmp_path)
    assert out.returncode == 2 and "config file" in out.stderr and "nope.yaml does not exist" in out.stderr
    assert "Traceback" not in out.stderr


def test_help_lists_every_subcommand(tmp_path):
    out = run_cli("--help", cwd=tmp_path)
    assert out.returncode == 0
    for command in ("demo", "evaluate", "index", "query"):
        assert command in out.stdout


def test_evaluate_a_crop_reid_model_writes_results_and_uses_the_reid_batch_size(tmp_path):
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.modeling import build_model

    from conftest import tiny_cfg
    from person_search.data import load_market1501
    from person_search.data.synthetic import generate_market1501

    market = tmp_path / "datasets" / "Market-1501-v15.09.15"
    generate_market1501(str(market), preset="tiny", seed=0)
    config = os.path.join(REPO_ROOT, "configs", "quick_schedules", "oim_tiny_reid_crop_cpu_instant_test.yaml")
    DetectionCheckpointer(build_model(tiny_cfg(config_file=config)), save_dir=str(tmp_path)).save("model")
    env = dict(os.environ, DETECTRON2_DATASETS=str(tmp_path / "datasets"), PYTHONPATH=REPO_ROOT)
    out = run_cli("evaluate", "--config", config, "--weights", str(tmp_path / "model.pth"), "--batch-size", "5",
                  "--output", "eval_out", cwd=tmp_path, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    (results,) = json.loads(out.stdout[out.stdout.rindex("\n{\n") + 1:]).values()
    saved = json.loads((tmp_path / "eval_out" / "inference" / "market1501_gallery" / "reid_results.json").read_text())
    assert saved["results"] == results and set(results["reid"]) == {"mAP", "rank1", "rank5", "rank10", "mINP"}
    # one loader over the query crops, then the gallery crops, in batches of --batch-size (TEST.REID.IMS_PER_BATCH)
    crops = sum(len(load_market1501(str(market), split)) for split in ("query", "gallery"))
    assert f"Start inference on {-(-crops // 5)} batches" in out.stdout + out.stderr
    # the person-search protocol flags mean nothing for crops: refused, not ignored
    out = run_cli("evaluate", "--config", config, "--weights", str(tmp_path / "model.pth"), "--gallery-size", "50",
                  "--use-gt-boxes", cwd=tmp_path, env=env)
    assert out.returncode == 2
    assert "is a crop re-ID model: --gallery-size, --use-gt-boxes apply to person search only" in out.stderr


def test_batch_size_sets_the_key_of_the_configs_task():
    from conftest import TINY_CONFIG, tiny_cfg
    from person_search.cli import _batch_size_key

    reid_config = os.path.join(REPO_ROOT, "configs", "quick_schedules", "oim_tiny_reid_crop_cpu_instant_test.yaml")
    assert _batch_size_key(tiny_cfg(config_file=reid_config)) == "TEST.REID.IMS_PER_BATCH"
    assert _batch_size_key(tiny_cfg(config_file=TINY_CONFIG)) == "TEST.PERSON_SEARCH.IMS_PER_BATCH"


def test_evaluate_refuses_protocol_flags_of_the_other_dataset_before_building_the_model(tmp_path, monkeypatch, capsys):
    from person_search.cli import main as cli_main
    from person_search.engine import PersonSearchTrainer

    def no_model(cfg):
        raise AssertionError("the refusal must come before the model build")

    monkeypatch.setattr(PersonSearchTrainer, "build_model", classmethod(lambda cls, cfg: no_model(cfg)))
    weights = tmp_path / "model.pth"
    weights.write_bytes(b"")  # never read: the error comes first
    cuhk_sysu = os.path.join(REPO_ROOT, "configs", "CUHK-SYSU", "oim_R_50_C4_cuhk_sysu.yaml")
    assert cli_main(["evaluate", "--config", cuhk_sysu, "--weights", str(weights), "--cross-camera"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("person-search: error: config ") and "oim_R_50_C4_cuhk_sysu.yaml" in error
    assert "cross_camera (TEST.PERSON_SEARCH.CROSS_CAMERA, a PRW setting)" in error and "CUHK-SYSU has none" in error
    prw = os.path.join(REPO_ROOT, "configs", "PRW", "oim_R_50_C4_prw.yaml")
    assert cli_main(["evaluate", "--config", prw, "--weights", str(weights), "--gallery-size", "50"]) == 2
    assert "--gallery-size is a CUHK-SYSU setting; prw_gallery use the PRW protocol" in capsys.readouterr().err


def test_evaluate_refuses_a_config_without_test_datasets(tmp_path):
    weights = tmp_path / "model.pth"
    weights.write_bytes(b"")
    config = os.path.join(REPO_ROOT, "configs", "quick_schedules", "oim_tiny_C4_cpu_instant_test.yaml")
    out = run_cli("evaluate", "--config", config, "--weights", str(weights), cwd=tmp_path)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "person-search: error:" in out.stderr and "DATASETS.TEST is empty" in out.stderr
    assert "synthetic_cuhk_sysu_gallery" in out.stderr


def test_demo_reruns_in_its_own_unfinished_folder(tmp_path):
    from person_search.demo import _check_output_dir
    from person_search.search import SearchError

    for name in ("untrained", "train"):  # what a demo stopped during training leaves
        (tmp_path / name).mkdir()
    _check_output_dir(str(tmp_path))
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(SearchError, match="demo output .* is not empty"):
        _check_output_dir(str(tmp_path))


def test_demo_refuses_a_folder_it_did_not_write(tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "summary.json").write_text('{"my": "notes"}')
    env = dict(os.environ, DETECTRON2_DATASETS=str(tmp_path / "datasets"), PYTHONPATH=REPO_ROOT)
    out = run_cli("demo", "--output", str(folder), cwd=tmp_path, env=env)
    assert out.returncode == 2 and "holds no summary.json of an earlier demo" in out.stderr
    assert os.listdir(folder) == ["summary.json"] and not os.path.exists(tmp_path / "datasets")
    assert (folder / "summary.json").read_text() == '{"my": "notes"}'
