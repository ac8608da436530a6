"""PersonSearchTrainer on a tiny synthetic CUHK-SYSU: training, evaluation, checkpoint resume."""
import json
import os

import pytest
import torch

from detectron2.engine import HookBase
from detectron2.utils.env import seed_all_rng

from conftest import REPO_ROOT, TINY_CONFIG, tiny_cfg
from person_search.engine import PersonSearchTrainer

TINY_REID_CONFIG = os.path.join(REPO_ROOT, "configs", "quick_schedules", "oim_tiny_reid_crop_cpu_instant_test.yaml")


def trainer_cfg(prefix, output_dir, *opts):
    cfg = tiny_cfg(
        "DATASETS.TRAIN", (f"{prefix}_train",),
        "DATASETS.TEST", (f"{prefix}_gallery",),
        "MODEL.REID.OIM.NUM_LABELED", 12,
        "INPUT.RANDOM_FLIP", "none",
        "SEED", 7,
        "SOLVER.MAX_ITER", 4,
        "SOLVER.CHECKPOINT_PERIOD", 2,
        "SOLVER.WARMUP_ITERS", 2,
        "TEST.PERSON_SEARCH.GALLERY_SIZE", 50,
        "OUTPUT_DIR", str(output_dir),
        *opts,
    )
    cfg.freeze()
    return cfg


class Crash(Exception):
    pass


class CrashAfter(HookBase):
    """Simulates a killed job: raises after the given iteration (after its checkpoint was written)."""

    def __init__(self, iteration):
        self.iteration = iteration

    def after_step(self):
        if self.trainer.iter == self.iteration:
            raise Crash()


def oim_state(trainer):
    oim = trainer.model.roi_heads.identity_loss
    return {name: getattr(oim, name).clone() for name in ("lut", "queue", "queue_ptr")}


def test_resume_after_a_crash_matches_an_uninterrupted_run(synthetic_cuhk_sysu, tmp_path):
    _, prefix = synthetic_cuhk_sysu
    seed_all_rng(7)
    # an evaluation at the checkpoint iteration (its random draws must not change what follows)
    cfg = trainer_cfg(prefix, tmp_path / "full", "TEST.EVAL_PERIOD", 2)
    full = PersonSearchTrainer(cfg)
    full.resume_or_load(resume=False)
    full.register_hooks([CrashAfter(-1)])
    full.train()
    expected_state, expected_iter = oim_state(full), full.iter

    seed_all_rng(7)
    cfg = trainer_cfg(prefix, tmp_path / "crashed", "TEST.EVAL_PERIOD", 2)
    crashed = PersonSearchTrainer(cfg)
    crashed.resume_or_load(resume=False)
    crashed.register_hooks([CrashAfter(2)])
    with pytest.raises(Crash):
        crashed.train()
    assert os.path.exists(tmp_path / "crashed" / "model_0000001.pth")

    resumed = PersonSearchTrainer(cfg)
    resumed.resume_or_load(resume=True)
    assert resumed.start_iter == 2
    resumed.train()
    assert resumed.iter == expected_iter == 4  # detectron2 leaves iter at max_iter after a finished run
    state = oim_state(resumed)
    assert int(state["queue_ptr"]) == int(expected_state["queue_ptr"])
    assert torch.allclose(state["lut"], expected_state["lut"], atol=1e-5)
    assert torch.allclose(state["queue"], expected_state["queue"], atol=1e-5)
    assert state["lut"].norm(dim=1).gt(0).any()
    for (name, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), atol=1e-4), name


def test_train_then_evaluate_writes_results(synthetic_cuhk_sysu, tmp_path):
    _, prefix = synthetic_cuhk_sysu
    cfg = trainer_cfg(prefix, tmp_path, "SOLVER.MAX_ITER", 2, "TEST.PERSON_SEARCH.USE_GT_BOXES", True)
    trainer = PersonSearchTrainer(cfg)
    trainer.resume_or_load(resume=False)
    results = trainer.train()  # the final evaluation runs at the end of training
    gallery = f"{prefix}_gallery"
    assert set(results) == {gallery, gallery + "/gt_boxes"}
    for value in results[gallery]["search"].values():
        assert 0.0 <= value <= 100.0
    # ground-truth gallery boxes: every target is "detected"
    assert results[gallery + "/gt_boxes"]["detection"]["recall"] == pytest.approx(100.0)
    assert os.path.exists(tmp_path / "inference" / gallery / "person_search_results.json")
    assert os.path.exists(tmp_path / "model_final.pth")


def train_with_amp(prefix, output_dir, amp_dtype, iterations):
    """(cfg, trainer) after a fresh run of ``iterations`` steps under SOLVER.AMP_DTYPE ``amp_dtype``."""
    cfg = trainer_cfg(prefix, output_dir, "SOLVER.AMP_DTYPE", amp_dtype, "SOLVER.MAX_ITER", iterations,
                      "TEST.EVAL_PERIOD", 0)
    trainer = PersonSearchTrainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.register_hooks([CrashAfter(-1)])
    trainer.train()
    return cfg, trainer


def test_bf16_autocast_training_step(synthetic_cuhk_sysu, tmp_path):
    _, trainer = train_with_amp(synthetic_cuhk_sysu[1], tmp_path, "bf16", 1)
    oim = trainer.model.roi_heads.identity_loss
    assert oim.lut.dtype == torch.float32 and torch.isfinite(oim.lut).all()


def test_fp16_training_scales_the_loss_and_checkpoints_the_scaler(synthetic_cuhk_sysu, tmp_path):
    cfg, trainer = train_with_amp(synthetic_cuhk_sysu[1], tmp_path, "fp16", 2)
    scaler = trainer._trainer.grad_scaler
    assert scaler is not None and scaler.get_scale() > 0
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
    saved = torch.load(tmp_path / "model_0000001.pth", weights_only=True)["trainer"]["_trainer"]["grad_scaler"]
    assert saved["scale"] == scaler.get_scale()
    resumed = PersonSearchTrainer(cfg)
    resumed.resume_or_load(resume=True)
    assert resumed._trainer.grad_scaler.get_scale() == scaler.get_scale()


def test_bf16_inference_evaluates_like_fp32(synthetic_cuhk_sysu, tmp_path):
    _, prefix = synthetic_cuhk_sysu
    results = {}
    for amp in ("", "bf16"):
        opts = ("TEST.AMP_DTYPE", amp, "TEST.PERSON_SEARCH.IMS_PER_BATCH", 2)
        cfg = trainer_cfg(prefix, tmp_path / (amp or "fp32"), *opts)
        torch.manual_seed(0)
        model = PersonSearchTrainer.build_model(cfg)
        results[amp] = PersonSearchTrainer.test(cfg, model)[f"{prefix}_gallery"]
    # A random model: near-tied scores can swap, so the metrics agree closely, not exactly.
    for task in ("search", "detection"):
        for key, value in results[""][task].items():
            assert results["bf16"][task][key] == pytest.approx(value, abs=5.0), (task, key)


def test_protocol_threshold_below_the_models_is_refused(synthetic_cuhk_sysu, tmp_path):
    _, prefix = synthetic_cuhk_sysu
    cfg = trainer_cfg(prefix, tmp_path, "TEST.PERSON_SEARCH.DET_THRESH", 0.3)
    with pytest.raises(ValueError, match="DET_THRESH = 0.3 is below MODEL.ROI_HEADS.SCORE_THRESH_TEST"):
        PersonSearchTrainer.build_evaluator(cfg, f"{prefix}_gallery")
    with pytest.raises(ValueError, match="DET_THRESH = 0.3 is below"):
        PersonSearchTrainer(cfg)  # before training starts
    lowered = trainer_cfg(
        prefix, tmp_path, "TEST.PERSON_SEARCH.DET_THRESH", 0.3, "MODEL.ROI_HEADS.SCORE_THRESH_TEST", 0.29
    )
    assert PersonSearchTrainer.build_evaluator(lowered, f"{prefix}_gallery") is not None


@pytest.mark.parametrize(
    "key, value, message",
    [("TEST.AMP_DTYPE", "half", "TEST.AMP_DTYPE must be one of"),
     ("TEST.PERSON_SEARCH.IMS_PER_BATCH", 0, "TEST.PERSON_SEARCH.IMS_PER_BATCH must be >= 1")],
)
def test_bad_test_settings_are_reported_before_training(synthetic_cuhk_sysu, tmp_path, key, value, message):
    _, prefix = synthetic_cuhk_sysu
    with pytest.raises(ValueError, match=message):
        PersonSearchTrainer(trainer_cfg(prefix, tmp_path, key, value))


def test_too_small_lookup_table_is_reported_before_training(synthetic_cuhk_sysu, tmp_path):
    _, prefix = synthetic_cuhk_sysu
    with pytest.raises(ValueError, match="MODEL.REID.OIM.NUM_LABELED"):
        PersonSearchTrainer(trainer_cfg(prefix, tmp_path, "MODEL.REID.OIM.NUM_LABELED", 5))


@pytest.mark.parametrize(
    "config, example",
    [(TINY_CONFIG, "synthetic_cuhk_sysu_train"), (TINY_REID_CONFIG, "market1501_train")],
)
def test_training_without_a_dataset_names_the_key_to_set(tmp_path, config, example):
    # the quick_schedules C4 / FPN configs name no dataset; detectron2 alone fails with "AssertionError: ()"
    cfg = tiny_cfg("DATASETS.TRAIN", (), "OUTPUT_DIR", str(tmp_path), config_file=config)
    with pytest.raises(ValueError, match="DATASETS.TRAIN is empty") as error:
        PersonSearchTrainer(cfg)
    assert example in str(error.value) and "datasets/prepare_synthetic.py" in str(error.value)


def test_train_net_script_help():
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, os.path.join(REPO_ROOT, "train_net.py"), "--help"], capture_output=True, text=True, check=True
    )
    assert "--config-file" in out.stdout and "--eval-only" in out.stdout


def test_crop_reid_trains_and_evaluates_with_the_same_trainer(tmp_path):
    from detectron2.data import DatasetCatalog

    from person_search.data import load_market1501, register_reid_splits
    from person_search.data.synthetic import generate_market1501

    root = tmp_path / "Market-1501-v15.09.15"
    generate_market1501(str(root), preset="tiny", seed=0)
    prefix = "test_trainer_market"
    if f"{prefix}_train" not in DatasetCatalog.list():
        register_reid_splits(prefix, str(root), load_market1501)
    cfg = tiny_cfg(
        "DATASETS.TRAIN", (f"{prefix}_train",),
        "DATASETS.TEST", (f"{prefix}_gallery",),
        "SOLVER.MAX_ITER", 3,
        "OUTPUT_DIR", str(tmp_path / "out"),
        config_file=TINY_REID_CONFIG,
    )
    cfg.freeze()
    trainer = PersonSearchTrainer(cfg)
    trainer.resume_or_load(resume=False)
    results = trainer.train()
    metrics = results[f"{prefix}_gallery"]["reid"]
    assert set(metrics) == {"mAP", "rank1", "rank5", "rank10", "mINP"}
    assert all(0.0 <= v <= 100.0 for v in metrics.values())
    saved = json.loads((tmp_path / "out" / "inference" / f"{prefix}_gallery" / "reid_results.json").read_text())
    assert saved["results"]["reid"] == pytest.approx(metrics)


def test_detectron2s_amp_switch_means_fp16():
    from person_search.engine.train_loop import amp_dtype_from_config

    assert amp_dtype_from_config(tiny_cfg()) is None
    assert amp_dtype_from_config(tiny_cfg("SOLVER.AMP.ENABLED", True)) == torch.float16
    assert amp_dtype_from_config(tiny_cfg("SOLVER.AMP.ENABLED", True, "SOLVER.AMP_DTYPE", "bf16")) == torch.bfloat16
