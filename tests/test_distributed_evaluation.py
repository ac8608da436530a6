"""Evaluation split over two CPU processes (gloo) gives the single-process results exactly (person search and crop
re-ID)."""
import json
import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from conftest import REPO_ROOT, tiny_cfg

REID_CONFIG = os.path.join(REPO_ROOT, "configs", "quick_schedules", "oim_tiny_reid_crop_cpu_instant_test.yaml")

OPTS = (
    "MODEL.REID.OIM.NUM_LABELED", 12,
    "MODEL.ROI_HEADS.SCORE_THRESH_TEST", 0.0,  # a random model scores low: keep its detections
    "TEST.PERSON_SEARCH.DET_THRESH", 0.0,
    "TEST.PERSON_SEARCH.GALLERY_SIZE", 50,
    "TEST.PERSON_SEARCH.USE_GT_BOXES", True,
)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _output_dir(dataset_root):
    """Where the evaluators write their results files: next to the temporary dataset, not in the working directory."""
    return os.path.join(os.path.dirname(dataset_root), "output")


def _evaluate(dataset_root, prefix):
    """PersonSearchTrainer.test of a seeded random tiny model on ``<prefix>_gallery``."""
    from person_search.data import register_cuhk_sysu
    from person_search.engine import PersonSearchTrainer

    register_cuhk_sysu(os.path.dirname(dataset_root), prefix=prefix, folder=os.path.basename(dataset_root))
    cfg = tiny_cfg(*OPTS, "DATASETS.TEST", (f"{prefix}_gallery",), "OUTPUT_DIR", _output_dir(dataset_root))
    torch.manual_seed(0)
    model = PersonSearchTrainer.build_model(cfg)
    return PersonSearchTrainer.test(cfg, model)


def _evaluate_reid(dataset_root, prefix):
    """PersonSearchTrainer.test of a seeded random tiny crop re-ID model on a Market-1501-format set."""
    from person_search.data import load_market1501, register_reid_splits
    from person_search.engine import PersonSearchTrainer

    register_reid_splits(prefix, dataset_root, load_market1501)
    cfg = tiny_cfg("DATASETS.TEST", (f"{prefix}_gallery",), "TEST.REID.IMS_PER_BATCH", 3,
                   "OUTPUT_DIR", _output_dir(dataset_root), config_file=REID_CONFIG)
    torch.manual_seed(0)
    model = PersonSearchTrainer.build_model(cfg)
    return PersonSearchTrainer.test(cfg, model)


def _worker(rank, world_size, port, evaluate, dataset_root, prefix, out_dir):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        results = evaluate(dataset_root, prefix)
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
            json.dump(results, f)
    finally:
        dist.destroy_process_group()


def test_two_process_evaluation_equals_one_process(synthetic_cuhk_sysu, tmp_path):
    root, prefix = synthetic_cuhk_sysu
    expected = json.loads(json.dumps(_evaluate(str(root), prefix)))
    gallery = f"{prefix}_gallery"
    assert expected[gallery + "/gt_boxes"]["search"]["mAP"] > 0  # not a trivial all-zero comparison
    rank0, rank1 = _run_on_two_processes(_evaluate, str(root), prefix, tmp_path)
    assert rank0 == expected  # each gallery image and query was processed on one rank, gathered on rank 0
    assert all(value == {} for value in rank1.values())  # other ranks return no metrics


def test_two_process_reid_evaluation_equals_one_process(tmp_path):
    from person_search.data.synthetic import generate_market1501

    root = str(tmp_path / "market")
    generate_market1501(root, preset="tiny", seed=1)
    expected = json.loads(json.dumps(_evaluate_reid(root, "test_dist_market")))
    rank0, rank1 = _run_on_two_processes(_evaluate_reid, root, "test_dist_market_2p", tmp_path)
    (reid0,), (reid1,) = rank0.values(), rank1.values()
    (expected_reid,) = expected.values()
    assert reid0 == expected_reid and reid1 == {}


def _run_on_two_processes(evaluate, dataset_root, prefix, out_dir):
    """The results of ``evaluate(dataset_root, prefix)`` on rank 0 and on rank 1 of two gloo processes."""
    mp.start_processes(_worker, args=(2, _free_port(), evaluate, dataset_root, prefix, str(out_dir)), nprocs=2,
                       start_method="spawn")
    return [json.loads((out_dir / f"rank{r}.json").read_text()) for r in range(2)]
