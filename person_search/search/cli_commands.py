"""The ``person-search index`` and ``person-search query`` subcommands."""
import argparse
import logging
import sys

from person_search.precision import PRECISION_FLAGS

__all__ = ["add_search_subcommands", "fail"]


def add_search_subcommands(subparsers):
    """Add ``index`` and ``query`` to the ``person-search`` subparsers (each sets ``func(args) -> exit code``)."""
    index = subparsers.add_parser(
        "index",
        help="detect and embed every person of an image folder or a video into a search index",
        description="Detect and embed every person of GALLERY (a folder of images, searched recursively, or a video "
        "file) and store the index in INDEX_DIR. Rerunning the same command resumes an interrupted run.",
    )
    index.add_argument("gallery", metavar="GALLERY", help="folder of images or video file")
    index.add_argument("--config", required=True, help="person-search config file")
    index.add_argument("--weights", required=True, help="model weights file ('' needs --allow-random-weights)")
    index.add_argument("-o", "--output", required=True, metavar="INDEX_DIR", help="index directory")
    index.add_argument("--video-every", type=int, default=1, metavar="N", help="index every N-th video frame")
    index.add_argument("--batch-size", type=int, default=4, metavar="B", help="images per forward pass")
    index.add_argument(
        "--score-thresh",
        type=float,
        default=None,
        help="minimum detection score (default: the config's TEST.PERSON_SEARCH.DET_THRESH)",
    )
    index.add_argument(
        "--allow-random-weights", action="store_true", help="allow --weights '' (a random model, for tests and demos)"
    )
    index.add_argument("--seed", type=int, default=0, help="seed of random weights")
    index.add_argument("--precision", choices=tuple(PRECISION_FLAGS),
                       help="inference precision, sets TEST.AMP_DTYPE (default: the config's)")
    index.add_argument("--opts", nargs=argparse.REMAINDER, default=[], metavar="KEY VALUE",
                       help="config overrides (last on the command line: everything after --opts is one)")
    index.set_defaults(func=_index_command)

    query = subparsers.add_parser(
        "query",
        help="search an index for the person in a box of an image",
        description="Rank the persons of INDEX_DIR by similarity to the person in --box of --image; write "
        "results.json and results.jpg into --out.",
    )
    query.add_argument("index_dir", metavar="INDEX_DIR", help="index directory written by `person-search index`")
    query.add_argument("--image", required=True, help="image showing the query person")
    query.add_argument("--box", required=True, metavar="x1,y1,x2,y2",
                       help="the query person's box in pixels (a value starting with '-' needs --box=...)")
    query.add_argument("--frame", type=int, metavar="N",
                       help="the person is in frame N (0-based) of a video: --image is then the video file")
    query.add_argument("--topk", type=int, default=10, help="number of hits (results.jpg shows the first 100)")
    query.add_argument("--out", required=True, metavar="DIR",
                       help="output directory: new, empty, or one an earlier query wrote (its results are replaced)")
    query.add_argument("--config", default=None, help="config file (default: the one recorded in the index)")
    query.add_argument("--weights", default=None, help="weights file (default: the one recorded in the index)")
    query.add_argument("--backend", choices=("auto", "numpy", "faiss"), default="auto", help="search backend")
    query.add_argument("--force", action="store_true", help="search even if the model differs from the index's")
    query.add_argument("--opts", nargs=argparse.REMAINDER, default=[], metavar="KEY VALUE",
                       help="config overrides (last on the command line: everything after --opts is one)")
    query.set_defaults(func=_query_command)


def _setup_logging():
    from detectron2.utils.logger import setup_logger

    setup_logger(name="person_search", abbrev_name="ps")
    logging.getLogger("person_search").setLevel(logging.INFO)


def fail(error):
    """Print ``error`` as the command's error message; the exit code 2."""
    print(f"person-search: error: {error}", file=sys.stderr)
    return 2


def _index_command(args):
    from .index import build_index, load_search_config
    from .sources import SearchError

    _setup_logging()
    try:
        opts = list(args.opts)
        if args.precision:
            opts += ["TEST.AMP_DTYPE", PRECISION_FLAGS[args.precision]]
        cfg = load_search_config(args.config, opts)
        index = build_index(
            cfg,
            args.weights,
            args.gallery,
            args.output,
            batch_size=args.batch_size,
            video_every=args.video_every,
            score_thresh=args.score_thresh,
            allow_random_weights=args.allow_random_weights,
            seed=args.seed,
            config_path=args.config,
        )
    except (SearchError, FileNotFoundError) as e:
        return fail(e)
    except KeyboardInterrupt:
        print(f"person-search: interrupted; rerun the same command to resume from {args.output}", file=sys.stderr)
        return 130
    counts = index.manifest["counts"]
    pictures = "frames" if index.manifest["gallery"]["kind"] == "video" else "images"
    print(f"indexed {counts['boxes']} persons in {counts['images']} {pictures} ({counts['skipped']} unreadable "
          "or too thin skipped)")
    print(args.output)
    return 0


def _query_command(args):
    from .index import GalleryIndex, load_search_config
    from .query import parse_box, search_person
    from .sources import SearchError

    _setup_logging()
    try:
        index = GalleryIndex.load(args.index_dir)
        cfg = None  # search_person's default: the config recorded in the index
        if args.config or args.opts:
            cfg = load_search_config(args.config or index.config_file, args.opts)
        result = search_person(
            index,
            args.image,
            parse_box(args.box),
            topk=args.topk,
            out_dir=args.out,
            cfg=cfg,
            weights=args.weights,
            force=args.force,
            backend=args.backend,
            frame=args.frame,
        )
    except (SearchError, FileNotFoundError) as e:
        return fail(e)
    for hit in result["hits"]:
        where = hit["path"] + (f" frame {hit['frame']}" if hit["frame"] is not None else "")
        print(f"#{hit['rank']:<3d} {hit['score']:.4f}  {where}  box {[round(v, 1) for v in hit['box']]}")
    print(result["files"]["json"])
    print(result["files"]["picture"])
    return 0
