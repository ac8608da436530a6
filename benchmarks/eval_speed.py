"""Speed of the person-search evaluation at CUHK-SYSU and PRW scale, on synthetic detections.

CUHK-SYSU: 6,978 gallery images with ~20 detections each, 2,900 queries, D=256, gallery sizes 100 and -1 (whole
set), from a synthetic ``search_protocol`` built in memory. PRW: 6,112 frames in 6 cameras, 2,057 queries of 450
identities, all-camera and cross-camera galleries. Embeddings are "trained-like" (a query is closer to its own
person than to others) unless ``--random-embeddings`` (an untrained model: the worst case of the ranking step).

Prints one JSON line per measurement: name, value, unit and machine info. Example:
    python benchmarks/eval_speed.py
    python benchmarks/eval_speed.py --scale 0.1      # a quick smoke run
"""
import argparse
import json
import time
import uuid

import numpy as np
import torch

import person_search  # noqa: F401  (adapts detectron2 before its modules are imported)
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import Boxes, BoxMode, Instances

from person_search.evaluation import PersonSearchEvaluator

from machine import machine_info  # benchmarks/machine.py (the script's folder is on sys.path)

DIM = 256
PERSON_WH = np.array([50.0, 130.0])


def _emit(name, value, unit, **extra):
    print(json.dumps({"name": name, "value": round(value, 4), "unit": unit, **extra, "machine": machine_info()}),
          flush=True)


def _normalize(x):
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


class _Scene:
    """Synthetic gallery: per image a list of annotated people (pid) and detections with embeddings."""

    def __init__(self, rng, num_images, people_per_image, dets_per_image, num_ids, id_frames, random_embeddings):
        self.rng = rng
        self.num_images = num_images
        self.id_vectors = _normalize(rng.standard_normal((num_ids, DIM)))
        self.random_embeddings = random_embeddings
        # each identity appears in id_frames distinct images; other people are unlabeled (-1)
        self.people = [[] for _ in range(num_images)]
        for pid in range(num_ids):
            for image in rng.choice(num_images, size=id_frames, replace=False):
                self.people[image].append(pid)
        for image in range(num_images):
            extra = max(people_per_image - len(self.people[image]), 0)
            self.people[image] += [-1] * int(rng.integers(0, extra + 1))
        self.gt_boxes = [self._layout(len(p)) for p in self.people]
        self.dets = [self._detections(image, dets_per_image) for image in range(num_images)]

    def _layout(self, n):
        x = np.arange(n) * 70.0 + 10.0
        return np.stack([x, np.full(n, 20.0), x + PERSON_WH[0], np.full(n, 20.0 + PERSON_WH[1])], axis=1)

    def embed(self, pid, n=1):
        if self.random_embeddings or pid < 0:
            return _normalize(self.rng.standard_normal((n, DIM)))
        return _normalize(self.id_vectors[pid] + 0.08 * self.rng.standard_normal((n, DIM)))

    def _detections(self, image, dets_per_image):
        """~90% of people detected (jittered box, score >= 0.5), padded with background detections."""
        boxes, scores, embs = [], [], []
        for pid, box in zip(self.people[image], self.gt_boxes[image]):
            if self.rng.random() < 0.9:
                boxes.append(box + self.rng.normal(0, 3, 4))
                scores.append(self.rng.uniform(0.6, 1.0))
                embs.append(self.embed(pid)[0])
        n_bg = max(int(self.rng.integers(dets_per_image // 2, dets_per_image * 3 // 2 + 1)) - len(boxes), 0)
        xy = self.rng.uniform(0, 600, (n_bg, 2))
        boxes += list(np.c_[xy, xy + PERSON_WH])
        scores += list(self.rng.uniform(0.3, 1.0, n_bg))
        embs += list(self.embed(-1, n_bg))
        return np.array(boxes).reshape(-1, 4), np.array(scores), np.array(embs, dtype=np.float32).reshape(-1, DIM)

    def instances(self, image):
        boxes, scores, embs = self.dets[image]
        inst = Instances((800, 1200))
        inst.pred_boxes = Boxes(torch.as_tensor(boxes, dtype=torch.float32))
        inst.scores = torch.as_tensor(scores, dtype=torch.float32)
        inst.pred_classes = torch.zeros(len(scores), dtype=torch.int64)
        inst.pred_embeddings = torch.as_tensor(embs)
        return inst

    def gallery_dicts(self, prefix, cameras=None):
        out = []
        for image in range(self.num_images):
            anns = [{"bbox": list(b), "bbox_mode": BoxMode.XYXY_ABS, "category_id": 0, "person_id": pid}
                    for pid, b in zip(self.people[image], self.gt_boxes[image])]
            d = {"file_name": f"/synthetic/{prefix}{image}.jpg", "image_id": f"{prefix}{image}.jpg",
                 "height": 800, "width": 1200, "annotations": anns}
            if cameras is not None:
                d["camera_id"] = int(cameras[image])
            out.append(d)
        return out


def _prw_queries(scene, num_queries, prefix, cameras):
    """PRW query dicts: each picks a labeled person in some image (its query image) and embeds its box."""
    labeled = [(image, k) for image in range(scene.num_images) for k, pid in enumerate(scene.people[image])
               if pid >= 0]
    picks = scene.rng.choice(len(labeled), size=num_queries, replace=False)
    dicts, embs = [], []
    for qid, pick in enumerate(picks):
        image, k = labeled[pick]
        pid = scene.people[image][k]
        d = {"file_name": f"/synthetic/{prefix}{image}.jpg", "image_id": f"{prefix}{image}.jpg", "height": 800,
             "width": 1200, "query_box": list(scene.gt_boxes[image][k]), "person_id": pid, "query_id": qid,
             "camera_id": int(cameras[image])}
        dicts.append(d)
        embs.append(scene.embed(pid)[0])
    return dicts, embs


def _cuhk_protocol(scene, queries, prefix):
    """search_protocol(gallery_size) of CUHK-SYSU shape: positives first, then negatives (-1: all other images)."""
    cache = {}

    def protocol(gallery_size):
        if gallery_size not in cache:
            entries = []
            names = [f"{prefix}{i}.jpg" for i in range(scene.num_images)]
            images_of = {}
            for i, people in enumerate(scene.people):
                for pid in people:
                    images_of.setdefault(pid, []).append(i)
            for q in queries:
                own = int(q["image_id"][len(prefix):-4])
                pos = [i for i in images_of[q["person_id"]] if i != own]
                boxes = [scene.gt_boxes[i][scene.people[i].index(q["person_id"])] for i in pos]
                taken = set(pos) | {own}
                if gallery_size == -1:
                    rest = [i for i in range(scene.num_images) if i not in taken]
                else:
                    rest = []
                    # at small --scale the test set may hold fewer images than the gallery size
                    while len(rest) < min(gallery_size, scene.num_images - 1) - len(pos):
                        i = int(scene.rng.integers(scene.num_images))
                        if i not in taken:
                            taken.add(i)
                            rest.append(i)
                entries.append({"gallery": [names[i] for i in pos + rest],
                                "positive_boxes": np.array(boxes, dtype=np.float32).reshape(-1, 4)})
            cache[gallery_size] = entries
        return cache[gallery_size]

    return protocol


def _register(name, gallery_dicts, query_dicts, **meta):
    DatasetCatalog.register(name + "_gallery", lambda: gallery_dicts)
    DatasetCatalog.register(name + "_query", lambda: query_dicts)
    MetadataCatalog.get(name + "_gallery").set(evaluator_type="person_search", query_dataset=name + "_query",
                                               dataset_root="/synthetic", thing_classes=["person"], **meta)
    return name + "_gallery"


def _feed(evaluator, scene, gallery_dicts, query_dicts, query_embs):
    evaluator.reset()
    for image, d in enumerate(gallery_dicts):
        evaluator.process([d], [{"instances": scene.instances(image)}])
    for d, emb in zip(query_dicts, query_embs):
        inst = Instances((800, 1200))
        inst.pred_boxes = Boxes(torch.tensor([d["query_box"]], dtype=torch.float32))
        inst.pred_embeddings = torch.as_tensor(emb)[None]
        evaluator.process([d], [{"instances": inst}])


def _time_evaluate(name, evaluator, scene, gallery_dicts, query_dicts, query_embs, tag):
    tic = time.perf_counter()
    _feed(evaluator, scene, gallery_dicts, query_dicts, query_embs)
    _emit(f"{name}.process", time.perf_counter() - tic, "s", images=len(gallery_dicts), queries=len(query_dicts))
    tic = time.perf_counter()
    results = evaluator.evaluate()
    _emit(f"{name}.evaluate", time.perf_counter() - tic, "s", embeddings=tag, mAP=round(results["search"]["mAP"], 2),
          top1=round(results["search"]["top1"], 2), det_AP=round(results["detection"]["AP"], 2))


def bench_cuhk_sysu(rng, scale, random_embeddings):
    num_images, num_queries = int(6978 * scale), int(2900 * scale)
    scene = _Scene(rng, num_images, people_per_image=6, dets_per_image=20, num_ids=num_queries, id_frames=3,
                   random_embeddings=random_embeddings)
    prefix = "s"
    gallery_dicts = scene.gallery_dicts(prefix)
    query_dicts, query_embs = _queries_one_per_identity(scene, num_queries, prefix)
    protocol = _cuhk_protocol(scene, query_dicts, prefix)
    name = _register(f"bench_cuhk_{uuid.uuid4().hex}", gallery_dicts, query_dicts, protocol="cuhk_sysu",
                     gallery_sizes=(50, 100, 500, 1000, 2000, 4000), search_protocol=protocol)
    tag = "random" if random_embeddings else "trained-like"
    for gallery_size in (100, -1):
        tic = time.perf_counter()
        protocol(gallery_size)  # building the synthetic protocol is the loader's cost, not the evaluator's
        _emit(f"cuhk_sysu.g{gallery_size}.build_protocol", time.perf_counter() - tic, "s")
        evaluator = PersonSearchEvaluator(name, gallery_size=gallery_size)
        _time_evaluate(f"cuhk_sysu.g{gallery_size}", evaluator, scene, gallery_dicts, query_dicts, query_embs, tag)


def _queries_one_per_identity(scene, num_queries, prefix):
    """CUHK-SYSU: identity i is query i, asked from its first image (its other images are the positives)."""
    dicts, embs = [], []
    for qid in range(num_queries):
        image = next(i for i in range(scene.num_images) if qid in scene.people[i])
        k = scene.people[image].index(qid)
        dicts.append({"file_name": f"/synthetic/{prefix}{image}.jpg", "image_id": f"{prefix}{image}.jpg",
                      "height": 800, "width": 1200, "query_box": list(scene.gt_boxes[image][k]),
                      "person_id": qid, "query_id": qid, "occlusion": qid % 15 == 0, "resolution": qid % 10 == 0})
        embs.append(scene.embed(qid)[0])
    return dicts, embs


def bench_prw(rng, scale, random_embeddings):
    num_frames, num_queries = int(6112 * scale), int(2057 * scale)
    num_ids = max(int(450 * scale), 1)
    scene = _Scene(rng, num_frames, people_per_image=5, dets_per_image=10, num_ids=num_ids, id_frames=30,
                   random_embeddings=random_embeddings)
    cameras = rng.integers(1, 7, size=num_frames)
    prefix = "c"
    gallery_dicts = scene.gallery_dicts(prefix, cameras)
    query_dicts, query_embs = _prw_queries(scene, num_queries, prefix, cameras)
    name = _register(f"bench_prw_{uuid.uuid4().hex}", gallery_dicts, query_dicts, protocol="prw")
    tag = "random" if random_embeddings else "trained-like"
    for cross_camera in (False, True):
        evaluator = PersonSearchEvaluator(name, cross_camera=cross_camera)
        label = "prw.cross_camera" if cross_camera else "prw.all_cameras"
        _time_evaluate(label, evaluator, scene, gallery_dicts, query_dicts, query_embs, tag)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of the real dataset sizes")
    parser.add_argument("--random-embeddings", action="store_true", help="untrained-model embeddings")
    parser.add_argument("--only", choices=["cuhk_sysu", "prw"], help="run one dataset only")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    if args.only in (None, "cuhk_sysu"):
        bench_cuhk_sysu(rng, args.scale, args.random_embeddings)
    if args.only in (None, "prw"):
        bench_prw(rng, args.scale, args.random_embeddings)


if __name__ == "__main__":
    main()
