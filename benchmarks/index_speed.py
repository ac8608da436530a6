"""Gallery search speed: GalleryIndex's brute-force numpy search vs FAISS (exact IndexFlatIP), synthetic boxes.

For each gallery size N (``--sizes``, default 10k and 100k; 1M = 1 GB of float32 embeddings at D=256 also runs on
a 24 GB machine), N random L2-normalised D-dimensional embeddings are held in a :class:`GalleryIndex` (the class
``person_search index`` / ``query`` use) and searched with ``backend="faiss"`` and ``backend="numpy"``:

* ``index.build`` (s): FAISS: building the IndexFlatIP (first search's ``add`` of all embeddings, timed alone);
  numpy: nothing to build (the value is the GalleryIndex construction).
* ``index.query_latency`` (ms per query): ``search(queries, topk)`` with one query per call (batch 1) and with
  ``--queries`` queries per call (batched; the value is the call's time divided by the number of queries).

Each line has ``value`` (FAISS) and ``baseline_value`` (numpy brute force, same run), ``topk_agree`` (fraction
of queries whose top-k box indices are identical in both: both searches are exact), and machine info. Without
faiss installed the FAISS values are null.

Examples:
    python benchmarks/index_speed.py                                  # 10k and 100k boxes
    python benchmarks/index_speed.py --sizes 10000,100000,1000000     # up to 1M boxes (~1 GiB of embeddings, ~4 GiB peak)
"""
import argparse
import json
import sys
import time

import numpy as np

from person_search.search.index import GalleryIndex

from machine import machine_info  # benchmarks/machine.py (the script's folder is on sys.path)


def have_faiss():
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def synthetic_index(rng, n, dim, chunk=100_000):
    """A GalleryIndex of ``n`` random unit-norm embeddings (built in chunks: no float64 copy of the whole)."""
    embeddings = np.empty((n, dim), np.float32)
    for start in range(0, n, chunk):
        block = rng.standard_normal((min(chunk, n - start), dim), dtype=np.float32)
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        embeddings[start:start + len(block)] = block
    boxes = np.zeros((n, 4), np.float32)
    scores = np.ones(n, np.float32)
    image_index = (np.arange(n) // 20).astype(np.int32)
    manifest = {"embed_dim": dim, "images": [], "gallery": {"kind": "folder", "path": "<synthetic>"}}
    start = time.perf_counter()
    index = GalleryIndex("<synthetic>", manifest, embeddings, boxes, scores, image_index)
    return index, time.perf_counter() - start


def queries_near(rng, index, count):
    """Queries = gallery embeddings plus noise of norm ~0.3 (cosine ~0.96 to their source: a query person resembles
    an indexed one)."""
    picks = rng.integers(0, len(index), count)
    dim = index.embeddings.shape[1]
    q = index.embeddings[picks] + (0.3 / np.sqrt(dim)) * rng.standard_normal((count, dim), dtype=np.float32)
    return (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)


def time_search(index, queries, per_call, topk, backend, repeat):
    """ms per query of searching ``queries`` in calls of ``per_call`` (median over ``repeat`` passes), results."""
    passes, results = [], None
    calls = [queries[i:i + per_call] for i in range(0, len(queries), per_call)]
    for _ in range(repeat):
        out = []
        start = time.perf_counter()
        for q in calls:
            out.append(index.search(q, topk, backend=backend)[1])
        passes.append(time.perf_counter() - start)
        results = np.concatenate(out)
    return 1000.0 * float(np.median(passes)) / len(queries), results


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10000,100000", help="comma list of gallery sizes (boxes)")
    parser.add_argument("--dim", type=int, default=256, help="embedding dimension")
    parser.add_argument("--queries", type=int, default=100, help="queries per batched call")
    parser.add_argument("--single-queries", type=int, default=20, help="one-query calls timed per pass")
    parser.add_argument("--topk", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=3, help="timed passes (the median is reported)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",") if s]
    if not sizes or min(sizes) < 1 or args.queries < 1 or args.single_queries < 1 or args.repeat < 1:
        parser.error("sizes, --queries, --single-queries and --repeat must be >= 1")
    faiss_ok = have_faiss()
    machine = machine_info()
    rng = np.random.default_rng(args.seed)

    def emit(name, size, value, baseline_value, unit, **extra):
        record = {"name": name, "device": "cpu",
                  "config": {"boxes": size, "dim": args.dim, "topk": min(args.topk, size), "dtype": "float32"},
                  "backend": "faiss", "value": None if value is None else round(value, 4), "unit": unit,
                  "baseline": "numpy", "baseline_value": round(baseline_value, 4), **extra, "machine": machine}
        print(json.dumps(record), flush=True)

    for size in sizes:
        index, construct_seconds = synthetic_index(rng, size, args.dim)
        embeddings_mib = round(index.embeddings.nbytes / 2**20, 1)
        build = None
        if faiss_ok:
            start = time.perf_counter()
            index._faiss()  # the IndexFlatIP GalleryIndex builds on its first FAISS search
            build = time.perf_counter() - start
        emit("index.build", size, build, construct_seconds, "s", embeddings_mib=embeddings_mib,
             faiss_available=faiss_ok)
        queries = queries_near(rng, index, max(args.queries, args.single_queries))
        for per_call, count in ((1, args.single_queries), (args.queries, args.queries)):
            q = queries[:count]
            # one untimed call per backend: page-in, thread pools
            index.search(q[:per_call], args.topk, backend="numpy")
            numpy_ms, numpy_top = time_search(index, q, per_call, args.topk, "numpy", args.repeat)
            faiss_ms, agree = None, None
            if faiss_ok:
                index.search(q[:per_call], args.topk, backend="faiss")
                faiss_ms, faiss_top = time_search(index, q, per_call, args.topk, "faiss", args.repeat)
                agree = float(np.mean(np.all(faiss_top == numpy_top, axis=1)))
            emit("index.query_latency", size, faiss_ms, numpy_ms, "ms/query", batch=per_call, queries=count,
                 repeat=args.repeat, topk_agree=agree, faiss_available=faiss_ok)
        del index
    return 0


if __name__ == "__main__":
    sys.exit(main())
