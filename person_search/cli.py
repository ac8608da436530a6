"""The ``person-search`` command: demo, evaluate, index, query."""
import argparse
import json
import os
import sys

from .config import is_crop_reid
from .precision import PRECISION_FLAGS
from .search import SearchError
from .search.cli_commands import fail

__all__ = ["main", "build_parser"]


def build_parser():
    from . import __version__
    from .search.cli_commands import add_search_subcommands

    parser = argparse.ArgumentParser(prog="person-search", description=__doc__)
    parser.add_argument("--version", action="version", version=f"person_search {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_demo(subparsers)
    _add_evaluate(subparsers)
    add_search_subcommands(subparsers)
    return parser


def _add_demo(subparsers):
    from .demo import DEMO_CONFIG

    demo = subparsers.add_parser(
        "demo",
        help="generate synthetic data, train a tiny model on CPU, evaluate it, index the gallery and run a query",
    )
    demo.add_argument("--output", default="demo_output", help="output folder (default: demo_output)")
    demo.add_argument("--config", default=DEMO_CONFIG, help="config of the demo model")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--preset", default="demo", choices=("tiny", "demo"), help="size of the synthetic dataset")
    demo.add_argument("--opts", nargs=argparse.REMAINDER, default=[], metavar="KEY VALUE", help="config overrides")
    demo.set_defaults(func=_demo_command)


def _add_evaluate(subparsers):
    evaluate = subparsers.add_parser(
        "evaluate",
        help="evaluate a trained model on the config's DATASETS.TEST with the person-search (or re-ID) protocol",
    )
    evaluate.add_argument("--config", required=True, help="config file")
    evaluate.add_argument("--weights", required=True, help="model weights file")
    evaluate.add_argument("--gallery-size", type=int, help="CUHK-SYSU gallery size (50..4000, -1 = whole set)")
    evaluate.add_argument("--cross-camera", action="store_true", help="PRW: drop gallery frames of the query camera")
    evaluate.add_argument("--use-gt-boxes", action="store_true", help="also evaluate with ground-truth gallery boxes")
    evaluate.add_argument("--output", help="sets OUTPUT_DIR: results go to <output>/inference/<dataset>/ "
                          "(person_search_results.json or reid_results.json; default: the config's OUTPUT_DIR)")
    evaluate.add_argument("--precision", choices=tuple(PRECISION_FLAGS),
                          help="inference precision, sets TEST.AMP_DTYPE (default: the config's)")
    evaluate.add_argument("--batch-size", type=int, metavar="B",
                          help="gallery / query images per batch, sets TEST.PERSON_SEARCH.IMS_PER_BATCH (crop re-ID "
                          "configs: query / gallery crops per batch, sets TEST.REID.IMS_PER_BATCH)")
    evaluate.add_argument("--opts", nargs=argparse.REMAINDER, default=[], metavar="KEY VALUE", help="config overrides")
    evaluate.set_defaults(func=_evaluate_command)


def _setup_logging():
    from detectron2.utils.logger import setup_logger

    setup_logger()
    setup_logger(name="person_search", abbrev_name="ps")


def _demo_command(args):
    from .demo import format_summary, run_demo

    _setup_logging()
    try:
        summary = run_demo(args.output, config_file=args.config, seed=args.seed, preset=args.preset, opts=args.opts)
    except SearchError as e:  # e.g. a model trained too briefly to detect anyone: an index without persons
        return fail(e)
    print(format_summary(summary))
    return 0


def _evaluate_command(args):
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.data import MetadataCatalog

    from .engine import PersonSearchTrainer, require_datasets
    from .search import load_search_config

    if not os.path.isfile(args.weights):
        return fail(f"weights file {args.weights} does not exist")
    opts = list(args.opts)
    if args.gallery_size is not None:
        opts += ["TEST.PERSON_SEARCH.GALLERY_SIZE", args.gallery_size]
    if args.cross_camera:
        opts += ["TEST.PERSON_SEARCH.CROSS_CAMERA", True]
    if args.use_gt_boxes:
        opts += ["TEST.PERSON_SEARCH.USE_GT_BOXES", True]
    if args.output:
        opts += ["OUTPUT_DIR", args.output]
    if args.precision:
        opts += ["TEST.AMP_DTYPE", PRECISION_FLAGS[args.precision]]
    _setup_logging()
    try:
        cfg = load_search_config(args.config, opts)
    except (SearchError, FileNotFoundError) as e:
        return fail(e)
    person_search_flags = [flag for flag, given in (("--gallery-size", args.gallery_size is not None),
                                                    ("--cross-camera", args.cross_camera),
                                                    ("--use-gt-boxes", args.use_gt_boxes)) if given]
    if person_search_flags and is_crop_reid(cfg):
        return fail(f"config {args.config} is a crop re-ID model: {', '.join(person_search_flags)} apply to person "
                    "search only")
    if args.batch_size is not None:
        cfg.defrost()
        cfg.merge_from_list([_batch_size_key(cfg), args.batch_size])
        cfg.freeze()
    # settings the evaluators refuse (e.g. --cross-camera on CUHK-SYSU), reported before the model is built
    try:
        require_datasets(cfg, "TEST")
        evaluators = [PersonSearchTrainer.build_evaluator(cfg, name) for name in cfg.DATASETS.TEST]
    except (ValueError, NotImplementedError) as e:
        return fail(f"config {args.config}: {e}")
    prw = [name for name in cfg.DATASETS.TEST if getattr(MetadataCatalog.get(name), "protocol", None) == "prw"]
    if args.gallery_size is not None and prw:
        return fail(f"--gallery-size is a CUHK-SYSU setting; {', '.join(prw)} use the PRW protocol (whole gallery)")
    model = PersonSearchTrainer.build_model(cfg)
    DetectionCheckpointer(model).load(args.weights)
    try:
        results = PersonSearchTrainer.test(cfg, model, evaluators)
    except FileNotFoundError as e:  # the loaders name the missing dataset file and the expected layout
        return fail(e)
    print(json.dumps(results, indent=2))
    return 0


def _batch_size_key(cfg):
    """The test batch size key of the config's task: crops for the crop re-ID model, images for person search."""
    if is_crop_reid(cfg):
        return "TEST.REID.IMS_PER_BATCH"
    return "TEST.PERSON_SEARCH.IMS_PER_BATCH"


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
