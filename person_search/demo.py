"""The whole pipeline on embedded synthetic data, on CPU, in minutes (``make demo`` / ``person-search demo``).

1. write a synthetic CUHK-SYSU-format set (real file formats, procedurally drawn pedestrians);
2. evaluate the untrained model (the baseline);
3. train the tiny C4 model with OIM, then evaluate it with the CUHK-SYSU protocol;
4. index the gallery images with the trained model;
5. search the gallery for the first query person and draw the result.
"""
import json
import logging
import os
import shutil
import time

from detectron2.data import DatasetCatalog
from detectron2.utils.env import seed_all_rng

__all__ = ["run_demo", "DEMO_CONFIG"]

logger = logging.getLogger(__name__)

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
_DEMO_CONFIG_NAME = os.path.join("Synthetic", "oim_tiny_C4_synthetic_demo.yaml")
# The copy of configs/ that setup.py installs as person_search/configs (`pip install .`), else the repository's
# configs/ (a clone, also with `pip install -e .`).
_INSTALLED_CONFIG = os.path.join(_PACKAGE_DIR, "configs", _DEMO_CONFIG_NAME)
DEMO_CONFIG = (
    _INSTALLED_CONFIG
    if os.path.isfile(_INSTALLED_CONFIG)
    else os.path.join(os.path.dirname(_PACKAGE_DIR), "configs", _DEMO_CONFIG_NAME)
)
DATASET_PREFIX = "synthetic_cuhk_sysu"
# The folders the demo writes into its output folder before summary.json, which comes last.
_DEMO_FOLDERS = {"untrained", "train", "gallery", "index", "query"}


def _dataset_folder():
    # the folder person_search.data registers the synthetic_cuhk_sysu_* names for
    from detectron2.data import MetadataCatalog

    return MetadataCatalog.get(f"{DATASET_PREFIX}_gallery").dataset_root


def _prepare_data(seed, preset):
    from person_search.data.synthetic import MARKER_FILE, PRESETS, generate_cuhk_sysu

    folder = _dataset_folder()
    marker = os.path.join(folder, MARKER_FILE)
    if os.path.exists(marker):
        with open(marker) as f:
            written = json.load(f)
        # json turns the presets' tuples into lists
        wanted = json.loads(json.dumps(PRESETS["cuhk_sysu"][preset]))
        params = written.get("params", {})
        same = written.get("complete") and written.get("seed") == seed
        if same and all(params.get(key) == value for key, value in wanted.items()):
            logger.info(f"Using the synthetic dataset in {folder}")
            return folder
    logger.info(f"Writing the synthetic demo dataset to {folder}")
    generate_cuhk_sysu(folder, preset=preset, seed=seed, progress=True)
    return folder


def _check_output_dir(output_dir):
    """Refuse a non-empty folder that no earlier demo wrote: the demo replaces files there. An earlier demo's
    folder has its summary.json, or, if it stopped before the end, only entries the demo writes."""
    from person_search.search.index import json_object, require_own_folder

    def is_demo_output(path):
        summary = json_object(os.path.join(path, "summary.json"))
        finished = summary is not None and {"untrained", "trained"} <= set(summary)
        return finished or set(os.listdir(path)) <= _DEMO_FOLDERS

    require_own_folder(output_dir, "demo output", is_demo_output,
                       "summary.json of an earlier demo, nor only the folders a demo writes")


def _search_metrics(results):
    gallery = f"{DATASET_PREFIX}_gallery"
    return {"detection": results[gallery]["detection"], "search": results[gallery]["search"]}


def run_demo(output_dir="demo_output", *, config_file=DEMO_CONFIG, seed=0, preset="demo", opts=()):
    """Run the demo; returns the summary dict also written to ``<output_dir>/summary.json``.

    ``preset`` is the synthetic dataset's size (person_search.data.synthetic.PRESETS); the data are written to the
    folder registered as ``synthetic_cuhk_sysu_*`` (``$DETECTRON2_DATASETS/synthetic/CUHK-SYSU``).
    """
    from person_search.engine import PersonSearchTrainer
    from person_search.search import build_index, load_search_config, remove_index, search_person

    start = time.perf_counter()
    output_dir = os.path.abspath(output_dir)  # the summary names files by absolute path
    _check_output_dir(output_dir)
    os.makedirs(output_dir, exist_ok=True)
    _prepare_data(seed, preset)
    cfg = load_search_config(
        config_file, ["OUTPUT_DIR", os.path.join(output_dir, "train"), "SEED", seed, *opts]
    )
    gallery_name = f"{DATASET_PREFIX}_gallery"

    logger.info("Evaluating the untrained model (baseline)")
    seed_all_rng(seed)
    untrained = PersonSearchTrainer.build_model(cfg)
    evaluator = PersonSearchTrainer.build_evaluator(cfg, gallery_name, os.path.join(output_dir, "untrained"))
    untrained_results = _search_metrics(PersonSearchTrainer.test(cfg, untrained, [evaluator]))
    del untrained

    logger.info(f"Training for {cfg.SOLVER.MAX_ITER} iterations")
    seed_all_rng(seed)
    trainer = PersonSearchTrainer(cfg)
    trainer.resume_or_load(resume=False)
    trained_results = _search_metrics(trainer.train())
    weights = os.path.join(cfg.OUTPUT_DIR, "model_final.pth")

    logger.info("Indexing the gallery images with the trained model")
    gallery_dir = os.path.join(output_dir, "gallery")
    os.makedirs(gallery_dir, exist_ok=True)
    for record in DatasetCatalog.get(gallery_name):
        target = os.path.join(gallery_dir, os.path.basename(record["file_name"]))
        if not os.path.exists(target):
            shutil.copyfile(record["file_name"], target)
    index_dir = os.path.join(output_dir, "index")
    remove_index(index_dir)  # the weights changed: index afresh (refused if the folder holds no index)
    index = build_index(cfg, weights, gallery_dir, index_dir, config_path=config_file)

    query = DatasetCatalog.get(f"{DATASET_PREFIX}_query")[0]
    logger.info(f"Searching for query 0 ({query['image_id']}, box {query['query_box']})")
    found = search_person(index, query["file_name"], query["query_box"], topk=5, out_dir=os.path.join(output_dir, "query"))

    summary = {
        "untrained": untrained_results,
        "trained": trained_results,
        "iterations": cfg.SOLVER.MAX_ITER,
        "weights": weights,
        "index": index_dir,
        "query": found["query"],
        "top_hits": found["hits"],
        "result_json": found["files"]["json"],
        "result_picture": found["files"]["picture"],
        "seconds": round(time.perf_counter() - start, 1),
    }
    with open(os.path.join(output_dir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    return summary


def format_summary(summary):
    """A short human-readable report of :func:`run_demo`'s summary."""
    lines = ["", "person_search demo (synthetic CUHK-SYSU-format data, gallery size 50)", ""]
    lines.append(f"{'model':<12}{'det AP':>8}{'recall':>8}{'mAP':>8}{'top-1':>8}")
    for name in ("untrained", "trained"):
        det, search = summary[name]["detection"], summary[name]["search"]
        lines.append(f"{name:<12}{det['AP']:>8.1f}{det['recall']:>8.1f}{search['mAP']:>8.1f}{search['top1']:>8.1f}")
    lines += [
        "",
        f"trained weights : {summary['weights']}",
        f"gallery index   : {summary['index']}",
        f"query result    : {summary['result_json']}",
        f"result picture  : {summary['result_picture']}",
        f"total time      : {summary['seconds']} s",
    ]
    return "\n".join(lines)
