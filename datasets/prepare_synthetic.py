#!/usr/bin/env python
"""Writes a synthetic CUHK-SYSU, PRW or Market-1501 in the real on-disk format (see person_search.data.synthetic).

Examples:
    python datasets/prepare_synthetic.py --format cuhk_sysu --preset demo
    python datasets/prepare_synthetic.py --format prw --preset tiny --output /tmp/PRW --seed 3
    python datasets/prepare_synthetic.py --format cuhk_sysu --preset full --no-images   # annotations only

The default output (under $DETECTRON2_DATASETS, default ./datasets) is synthetic/CUHK-SYSU or synthetic/PRW, read
by the synthetic_cuhk_sysu_* / synthetic_prw_* datasets, and Market-1501-v15.09.15 (market1501_*) for Market-1501.
A folder that is not empty and was not written by this script is never touched unless --overwrite is given.
"""
import argparse
import logging
import os
import sys

# Default output folders under $DETECTRON2_DATASETS: those registered as synthetic_cuhk_sysu_* / synthetic_prw_*
# (so the real datasets' names never load synthetic data by accident); Market-1501 has no synthetic names.
_DEFAULT_FOLDERS = {
    "cuhk_sysu": os.path.join("synthetic", "CUHK-SYSU"),
    "prw": os.path.join("synthetic", "PRW"),
    "market1501": "Market-1501-v15.09.15",
}


def _pair(text: str):
    """'2,5' -> (2, 5)."""
    try:
        a, b = (int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected two integers 'a,b', got {text!r}")
    return a, b


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--format", required=True, choices=sorted(_DEFAULT_FOLDERS))
    parser.add_argument("--preset", default="demo", choices=["tiny", "demo", "benchmark", "full"])
    parser.add_argument("--output", help="output folder (default: $DETECTRON2_DATASETS/<dataset folder>)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--overwrite", action="store_true",
                        help="write into a non-empty folder that holds no synthetic-dataset marker")
    parser.add_argument("--no-images", action="store_true",
                        help="annotations only (cuhk_sysu, prw): for measuring load time at full scale")
    sizes = parser.add_argument_group("size overrides (default: the preset's values)")
    sizes.add_argument("--num-train-ids", type=int, help="labeled training identities")
    sizes.add_argument("--num-test-ids", type=int, help="test identities (CUHK-SYSU: queries)")
    sizes.add_argument("--num-train-images", type=int, help="training scene images / PRW frames")
    sizes.add_argument("--num-test-images", type=int, help="test scene images / PRW frames")
    sizes.add_argument("--people-per-image", type=_pair, metavar="MIN,MAX")
    sizes.add_argument("--appearances-per-id", type=_pair, metavar="MIN,MAX",
                       help="images per identity (Market-1501: crops per identity)")
    sizes.add_argument("--image-size", type=_pair, metavar="H,W")
    sizes.add_argument("--gallery-sizes", type=lambda s: tuple(int(v) for v in s.split(",")), metavar="K,K,...",
                       help="CUHK-SYSU TestG<k> files to write")
    sizes.add_argument("--num-distractors", type=int, help="Market-1501 pid-0000 crops")
    sizes.add_argument("--num-junk", type=int, help="Market-1501 pid -1 crops")
    return parser.parse_args(argv)


def _generator_kwargs(args) -> dict:
    """Maps the CLI's format-neutral names onto each generator's keyword arguments; rejects ones it lacks."""
    common = dict(preset=args.preset, seed=args.seed, overwrite=args.overwrite, progress=True)
    if args.format == "cuhk_sysu":
        kw = dict(num_identities=args.num_train_ids, num_queries=args.num_test_ids,
                  num_train_images=args.num_train_images, num_test_images=args.num_test_images,
                  people_per_image=args.people_per_image, appearances_per_id=args.appearances_per_id,
                  image_size=args.image_size, gallery_sizes=args.gallery_sizes, write_images=not args.no_images)
        unsupported = {"--num-distractors": args.num_distractors, "--num-junk": args.num_junk}
    elif args.format == "prw":
        kw = dict(num_train_ids=args.num_train_ids, num_test_ids=args.num_test_ids,
                  num_train_frames=args.num_train_images, num_test_frames=args.num_test_images,
                  people_per_image=args.people_per_image, appearances_per_id=args.appearances_per_id,
                  image_size=args.image_size, write_images=not args.no_images)
        unsupported = {"--num-distractors": args.num_distractors, "--num-junk": args.num_junk,
                       "--gallery-sizes": args.gallery_sizes}
    else:
        kw = dict(num_train_ids=args.num_train_ids, num_test_ids=args.num_test_ids,
                  images_per_id=args.appearances_per_id, num_distractors=args.num_distractors,
                  num_junk=args.num_junk)
        unsupported = {"--num-train-images": args.num_train_images, "--num-test-images": args.num_test_images,
                       "--people-per-image": args.people_per_image, "--image-size": args.image_size,
                       "--gallery-sizes": args.gallery_sizes, "--no-images": args.no_images or None}
    given = [flag for flag, value in unsupported.items() if value is not None]
    if given:
        raise SystemExit(f"prepare_synthetic.py: {', '.join(given)} do(es) not apply to --format {args.format}")
    return {**common, **kw}


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    # Imported here so that --help works without the heavy imports.
    from person_search.data.synthetic import generate

    root = os.path.expanduser(os.environ.get("DETECTRON2_DATASETS", "datasets"))  # as the registration reads it
    output = args.output or os.path.join(root, _DEFAULT_FOLDERS[args.format])
    kwargs = _generator_kwargs(args)
    print(f"Writing synthetic {args.format} ({args.preset}, seed {args.seed}) to {output}")
    try:
        summary = generate(args.format, output, **kwargs)
    except (FileExistsError, ValueError) as e:
        print(f"prepare_synthetic.py: {e}", file=sys.stderr)
        return 2
    print(f"Done in {summary.seconds:.1f}s: {summary.num_images} images, {summary.num_boxes} boxes, "
          f"{summary.num_train_ids} train / {summary.num_test_ids} test identities, {summary.num_queries} queries"
          + ("" if summary.images_written else " (annotations only)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
