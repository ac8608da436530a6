"""Speed of the crop re-ID evaluation at Market-1501 and CUHK03 scale, on synthetic embeddings.

Market-1501: 3,368 queries against 15,913 gallery crops (751 identities, 6 cameras, 2,793 distractors), D=256.
CUHK03 (new protocol, labeled): 1,400 queries against 5,328 crops of 700 identities, 2 cameras, standard metric and
the single-gallery-shot CMC (10 repeats). Embeddings are "trained-like": identity centre plus noise.

Prints one JSON line per measurement: name, value, unit, and the measured metrics. Example:
    python benchmarks/reid_eval_speed.py
    python benchmarks/reid_eval_speed.py --scale 0.1      # a quick smoke run
"""
import argparse
import json
import time

import numpy as np

import person_search  # noqa: F401  (adapts detectron2 before its modules are imported)
from person_search.evaluation.reid_evaluation import evaluate_reid

from machine import machine_info  # benchmarks/machine.py (the script's folder is on sys.path)

DIM = 256


def synthetic_split(rng, num_ids, num_q, num_g, num_cams, num_distractors, noise=2.0):
    """Query / gallery embeddings and ids: each crop = its identity's random centre + Gaussian noise."""
    centres = rng.normal(size=(num_ids + 1, DIM)).astype(np.float32)
    q_pids = rng.integers(1, num_ids + 1, num_q)
    g_pids = np.concatenate([rng.integers(1, num_ids + 1, num_g - num_distractors), np.zeros(num_distractors, int)])
    q_feat = centres[q_pids] + noise * rng.normal(size=(num_q, DIM)).astype(np.float32)
    g_feat = centres[g_pids] + noise * rng.normal(size=(num_g, DIM)).astype(np.float32)
    g_feat[g_pids == 0] = rng.normal(size=(num_distractors, DIM))  # distractors: unrelated crops
    return q_feat, g_feat, q_pids, g_pids, rng.integers(0, num_cams, num_q), rng.integers(0, num_cams, num_g)


def measure(name, split, **kwargs):
    start = time.perf_counter()
    metrics = evaluate_reid(*split, **kwargs)
    seconds = time.perf_counter() - start
    record = {
        "name": name,
        "value": round(seconds, 3),
        "unit": "s",
        "num_queries": int(split[0].shape[0]),
        "num_gallery": int(split[1].shape[0]),
        "mAP": round(100 * metrics["mAP"], 2),
        "rank1": round(100 * float(metrics["cmc"][0]), 2),
        "machine": machine_info(),
    }
    print(json.dumps(record), flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of the real set sizes")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)

    def n(x):
        return max(1, int(round(x * args.scale)))

    market = synthetic_split(rng, n(750), n(3368), n(15913), 6, n(2793))
    measure("reid_eval_market1501_seconds", market)
    cuhk03 = synthetic_split(rng, n(700), n(1400), n(5328), 2, 0)
    measure("reid_eval_cuhk03_seconds", cuhk03)
    measure("reid_eval_cuhk03_single_gallery_shot_seconds", cuhk03, single_gallery_shot=True, num_repeats=10)


if __name__ == "__main__":
    main()
