"""Training and inference speed and peak memory of the person-search model, side by side with the bare detector.

"ours" is the model of ``--config`` (a detectron2 Faster R-CNN with an identity branch: ReIDRes5ROIHeads or
ReIDStandardROIHeads). "bare" is built from the same config with ``MODEL.ROI_HEADS.NAME`` set to detectron2's
``Res5ROIHeads`` (C4) or ``StandardROIHeads`` (FPN): the same backbone, RPN, box head and input, no identity
branch. Both are randomly initialised (no weights are loaded) and measured in this process on the same inputs.

Measurements (one JSON line each, with the bare detector's value of the same run in ``bare_value``):

* ``train.throughput`` (img/s) and ``train.peak_memory`` (MiB): full training steps (forward under autocast when
  bf16 / fp16, backward, SGD step; fp16 with loss scaling) on random images with random ground-truth persons
  (``gt_pids``, some unlabeled).
* ``inference.throughput`` (img/s) at batch 1 and at ``--batch``: detection + embedding of every detection.
* ``query_embedding.throughput`` (queries/s): ``model.inference(inputs, detected_instances=...)`` on batches of
  query images with one given box each (the evaluation's and ``person_search query``'s path). The bare detector
  has no identity branch: its value is the same call, which runs the backbone and returns the boxes.
* with ``--check``: ``check.*`` lines comparing bf16-autocast inference to fp32 on the same inputs (max abs
  difference of the embeddings of matched detections and of given query boxes).

Precision "bf16" ("fp16") is ``torch.autocast(device, dtype=torch.bfloat16)`` (``torch.float16``) around the
forward pass (the identity loss keeps its tables and logits in fp32, as in training). Peak memory: ``torch.cuda.max_memory_allocated`` on a GPU
(reset per measurement; the model not being measured is moved to the CPU meanwhile); on a CPU the process's peak
resident set size ``resource.getrusage(RUSAGE_SELF).ru_maxrss``, reset per measurement through
``/proc/self/clear_refs`` where the kernel allows it (``memory_source`` says which). CPU values include the Python
process, libraries and both models; compare ours to bare, not to GPU numbers.

The RPN's and the box predictor's output layers are zeroed in both models (``--random-output-layers`` keeps
them): a random-init R50 saturates them, leaving a handful of proposals and no detections, so the RoI heads and
the identity branch would hardly run (see ``zero_output_layers``). Zeroed, there are POST_NMS_TOPK_TEST proposals
and TEST.DETECTIONS_PER_IMAGE detections per image, and each inference line reports ``detections_per_image``.
Training uses SGD with ``--lr`` (default 0: random-init weights with FrozenBN diverge at once with a real learning
rate; a step with lr 0 costs the same). Inference uses a test score threshold of ``--score-thresh`` (default 0:
every detection is kept and embedded, up to TEST.DETECTIONS_PER_IMAGE per image).

Examples:
    # paper's scale on a GPU (R50-C4, 600x1000 from the config, batch 4), then 900x1500
    python benchmarks/model_speed.py --device cuda --batch 4 --iters 20 --warmup 5 --check
    python benchmarks/model_speed.py --device cuda --config configs/CUHK-SYSU/oim_R_50_C4_cuhk_sysu_900x1500.yaml
    # CPU smoke run with the tiny model
    python benchmarks/model_speed.py --device cpu --config configs/quick_schedules/oim_tiny_C4_cpu_instant_test.yaml \
        --batch 2 --iters 3 --warmup 1 --check
"""
import argparse
import ctypes
import json
import os
import resource
import sys
import time

import numpy as np
import torch

import person_search  # noqa: F401  (adapts detectron2 before its modules are imported)
from detectron2.config import get_cfg
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances, pairwise_iou
from detectron2.utils.events import EventStorage

from person_search import add_person_search_config
from person_search.modeling import apply_memory_format
from person_search.precision import autocast as precision_autocast

from machine import machine_info  # benchmarks/machine.py (the script's folder is on sys.path)

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_CONFIG = os.path.join(REPO_ROOT, "configs", "CUHK-SYSU", "oim_R_50_C4_cuhk_sysu.yaml")
# the bare detector of each ReID ROI head: same backbone/input, no identity branch
BARE_ROI_HEADS = {"ReIDRes5ROIHeads": "Res5ROIHeads", "ReIDStandardROIHeads": "StandardROIHeads"}
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
BENCHMARKS = ("train", "inference", "query")
MIB = 2.0**20


# ----------------------------------------------------------------------------------------------------- setup
def build_cfgs(args):
    """(ours, bare) frozen configs."""
    cfg = get_cfg()
    add_person_search_config(cfg)
    cfg.merge_from_file(args.config)
    cfg.merge_from_list(list(args.opts))
    cfg.MODEL.DEVICE = args.device
    cfg.MODEL.WEIGHTS = ""
    # --channels-last or MODEL.CHANNELS_LAST True among the overrides; the rest of the script reads the flag
    args.channels_last = cfg.MODEL.CHANNELS_LAST = args.channels_last or cfg.MODEL.CHANNELS_LAST
    if args.proposals is not None:
        cfg.MODEL.RPN.POST_NMS_TOPK_TEST = args.proposals
    bare = cfg.clone()
    name = cfg.MODEL.ROI_HEADS.NAME
    if name not in BARE_ROI_HEADS:
        raise SystemExit(
            f"model_speed: no bare detector known for ROI heads {name!r} (known: {sorted(BARE_ROI_HEADS)})"
        )
    bare.MODEL.ROI_HEADS.NAME = BARE_ROI_HEADS[name]
    cfg.freeze()
    bare.freeze()
    return cfg, bare


def num_identities(cfg):
    loss = cfg.MODEL.REID.LOSS
    if loss == "OIM":
        return cfg.MODEL.REID.OIM.NUM_LABELED
    if loss == "Softmax":
        return cfg.MODEL.REID.SOFTMAX.NUM_CLASSES
    return 1


def random_boxes(gen, n, height, width):
    """``n`` person-shaped boxes (height 1/6..1/2 of the image, aspect 0.4) inside a height x width image."""
    bh = (torch.rand(n, generator=gen) * (1 / 2 - 1 / 6) + 1 / 6) * height
    bw = 0.4 * bh
    x1 = torch.rand(n, generator=gen) * (width - bw)
    y1 = torch.rand(n, generator=gen) * (height - bh)
    return torch.stack([x1, y1, x1 + bw, y1 + bh], dim=1)


def random_image(gen, height, width, device):
    return torch.randint(0, 256, (3, height, width), dtype=torch.uint8, generator=gen).to(device)


def training_batches(gen, count, batch, height, width, device, num_ids, persons=5):
    """``count`` batches of ``batch`` dicts: image and Instances with gt_boxes / gt_classes / gt_pids."""
    batches = []
    for _ in range(count):
        inputs = []
        for _ in range(batch):
            inst = Instances((height, width))
            inst.gt_boxes = Boxes(random_boxes(gen, persons, height, width))
            inst.gt_classes = torch.zeros(persons, dtype=torch.int64)
            pids = torch.randint(0, num_ids, (persons,), generator=gen)
            pids[torch.rand(persons, generator=gen) < 0.3] = -1  # unlabeled persons
            inst.gt_pids = pids
            inputs.append({"image": random_image(gen, height, width, device), "instances": inst.to(device),
                           "height": height, "width": width})
        batches.append(inputs)
    return batches


def test_batches(gen, count, batch, height, width, device):
    return [[{"image": random_image(gen, height, width, device), "height": height, "width": width}
             for _ in range(batch)] for _ in range(count)]


def query_batches(gen, count, batch, height, width, device):
    """Batches of (inputs, given boxes): query images with one person box each."""
    return [(inputs, [random_boxes(gen, 1, height, width).to(device) for _ in inputs])
            for inputs in test_batches(gen, count, batch, height, width, device)]


def given_instances(boxes, height, width):
    """Fresh Instances per call: detectron2's postprocessing rescales given boxes in place."""
    out = []
    for b in boxes:
        inst = Instances((height, width))
        inst.pred_boxes = Boxes(b.clone())
        inst.pred_classes = torch.zeros(len(b), dtype=torch.int64, device=b.device)
        inst.scores = torch.ones(len(b), device=b.device)
        out.append(inst)
    return out


# --------------------------------------------------------------------------------------------- measurement
def _release_free_heap():
    """Return freed heap memory to the OS (glibc's malloc_trim), so that the resident set is what is in use."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


class Meter:
    """Timing (synchronised on CUDA) and peak memory of one measurement."""

    def __init__(self, device):
        self.device = device
        self.cuda = device.type == "cuda"
        self.rss_resettable = False
        if not self.cuda:
            try:
                with open("/proc/self/clear_refs", "w") as f:
                    f.write("5")
                self.rss_resettable = True
            except OSError:
                pass

    @property
    def memory_source(self):
        if self.cuda:
            return "torch.cuda.max_memory_allocated (reset per measurement)"
        if self.rss_resettable:
            return "ru_maxrss (process peak RSS, reset per measurement via /proc/self/clear_refs)"
        return "ru_maxrss (process peak RSS since start, not resettable here)"

    def sync(self):
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def reset_peak(self):
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
        elif self.rss_resettable:
            _release_free_heap()  # else the heap kept from earlier measurements counts for whichever model is next
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")

    def peak_mib(self):
        if self.cuda:
            return torch.cuda.max_memory_allocated(self.device) / MIB
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux

    def run(self, step, warmup, iters):
        """Seconds per call of ``step(i)`` over ``iters`` calls after ``warmup`` calls; peak memory (MiB)."""
        self.sync()
        self.reset_peak()
        for i in range(warmup):
            step(i)
        self.sync()
        start = time.perf_counter()
        for i in range(iters):
            step(warmup + i)
        self.sync()
        seconds = (time.perf_counter() - start) / iters
        return seconds, self.peak_mib()


def zero_output_layers(model):
    """Zero the RPN's and the box predictor's output layers (same compute, well-formed proposals / detections).

    A randomly initialised deep ResNet with FrozenBN has huge activations (~1e3 at res4 for R50), so its RPN deltas
    saturate and NMS collapses the proposals to a handful, and the box classifier's logits saturate: the RoI head
    and the identity branch would run on almost no boxes. With these layers at zero every anchor scores 0.5 and
    proposals are the anchors (POST_NMS_TOPK_TEST of them survive NMS), every proposal scores 0.5 as a person and
    keeps its box, so inference embeds TEST.DETECTIONS_PER_IMAGE boxes per image, like a trained detector in a
    crowded scene. Training steps run the same operations whatever the weights.
    """
    rpn_head = model.proposal_generator.rpn_head
    predictor = model.roi_heads.box_predictor
    layers = [getattr(rpn_head, "objectness_logits", None), getattr(rpn_head, "anchor_deltas", None),
              predictor.cls_score, predictor.bbox_pred]
    with torch.no_grad():
        for layer in layers:
            if layer is not None:
                layer.weight.zero_()
                if layer.bias is not None:
                    layer.bias.zero_()


class Models:
    """The two models; on a GPU only the one being measured stays on the device."""

    def __init__(self, cfg, bare_cfg, device, seed, zero_outputs=True, compile_backbone=False):
        self.device = device
        self.models = {}
        for name, c in (("bare", bare_cfg), ("ours", cfg)):
            torch.manual_seed(seed)
            model = build_model(c)
            if zero_outputs:
                zero_output_layers(model)
            apply_memory_format(model, c)  # MODEL.CHANNELS_LAST (--channels-last), as in training and inference
            if compile_backbone:
                # dynamic shapes: images of a batch are padded to varying sizes; compiled on the first (warmup) call
                model.backbone = torch.compile(model.backbone, dynamic=True)
            self.models[name] = model.to("cpu" if device.type == "cuda" else device)

    def get(self, name):
        if self.device.type == "cuda":
            for other, model in self.models.items():
                if other != name:
                    model.to("cpu")
            torch.cuda.empty_cache()
            self.models[name].to(self.device)
        return self.models[name]


def autocast(device, precision):
    return precision_autocast(device, PRECISIONS[precision])


def train_step_fn(model, batches, device, precision, lr):
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=lr, momentum=0.9)
    # fp16 trains with loss scaling, as the trainer does (SOLVER.AMP_DTYPE "fp16"); disabled, the scaler is a no-op
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")

    def step(i):
        with autocast(device, precision):
            losses = model(batches[i % len(batches)])
        total = sum(losses.values())
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(total).backward()
        scaler.step(optimizer)
        scaler.update()

    return step, optimizer


def set_score_thresh(model, thresh):
    predictor = model.roi_heads.box_predictor
    predictor.test_score_thresh = thresh


# ------------------------------------------------------------------------------------------------- output
class Emitter:
    def __init__(self, args, cfg, device):
        self.common = {
            "device": device.type,
            "config": os.path.relpath(args.config, REPO_ROOT) if args.config.startswith(REPO_ROOT) else args.config,
            "roi_heads": cfg.MODEL.ROI_HEADS.NAME,
            "bare_roi_heads": BARE_ROI_HEADS[cfg.MODEL.ROI_HEADS.NAME],
            "height": args.height,
            "width": args.width,
            "test_proposals": cfg.MODEL.RPN.POST_NMS_TOPK_TEST,
            "train_rois_per_image": cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE,
            "channels_last": args.channels_last,
            "compiled_backbone": args.compile,
            "embed_detections_from": cfg.MODEL.REID.EMBED_DETECTIONS_FROM,
            "overrides": list(args.opts),
        }
        self.machine = machine_info(device)

    def __call__(self, name, value, unit, bare_value=None, **extra):
        record = {"name": name, **self.common, **extra, "value": _round(value), "unit": unit,
                  "bare_value": _round(bare_value)}
        if value is not None and bare_value:
            record["ratio_to_bare"] = _round(value / bare_value)
        record["machine"] = self.machine
        print(json.dumps(record), flush=True)


def _round(x):
    return None if x is None else round(float(x), 4)


# -------------------------------------------------------------------------------------------- benchmarks
def measure_pair(rounds, measure):
    """``measure(name)`` for "bare" and "ours", ``rounds`` times, alternating which goes first (bare, ours, ours,
    bare, ...) so that a machine speeding up or slowing down during the run affects both alike.

    Returns {name: [result of each round]}.
    """
    results = {"bare": [], "ours": []}
    for r in range(rounds):
        for name in ("bare", "ours") if r % 2 == 0 else ("ours", "bare"):
            results[name].append(measure(name))
    return results


def emit_pair(emit, name, values, unit, **extra):
    """One line for a measurement of both models: the medians over rounds, and with several rounds each round's
    ours/bare ratio (the spread shows the machine's noise)."""
    ours, bare = values["ours"], values["bare"]
    if len(ours) > 1:
        extra["rounds"] = len(ours)
        extra["round_ratios"] = [_round(o / b) for o, b in zip(ours, bare)]
    emit(name, float(np.median(ours)), unit, float(np.median(bare)), **extra)


def bench_train(args, models, meter, emit, cfg, device, gen):
    batches = training_batches(gen, 2, args.batch, args.height, args.width, device, num_identities(cfg))
    for precision in args.precisions:

        def measure(name):
            model = models.get(name).train()
            step, optimizer = train_step_fn(model, batches, device, precision, args.lr)
            with EventStorage():
                seconds, peak = meter.run(step, args.warmup, args.iters)
            optimizer.zero_grad(set_to_none=True)
            return args.batch / seconds, peak

        results = measure_pair(args.rounds, measure)
        common = dict(precision=precision, batch=args.batch, iters=args.iters, warmup=args.warmup, lr=args.lr)
        emit_pair(emit, "train.throughput", {k: [r[0] for r in v] for k, v in results.items()}, "img/s", **common)
        emit_pair(emit, "train.peak_memory", {k: [r[1] for r in v] for k, v in results.items()}, "MiB",
                  memory_source=meter.memory_source, **common)


def bench_inference(args, models, meter, emit, device, gen):
    for batch in sorted({1, args.batch}):
        batches = test_batches(gen, 2, batch, args.height, args.width, device)
        for precision in args.precisions:

            def measure(name):
                model = models.get(name).eval()
                set_score_thresh(model, args.score_thresh)
                counts = []

                def step(i):
                    with torch.no_grad(), autocast(device, precision):
                        outputs = model(batches[i % len(batches)])
                    counts.extend(len(o["instances"]) for o in outputs)

                seconds, peak = meter.run(step, args.warmup, args.iters)
                return batch / seconds, peak, float(np.mean(counts))

            results = measure_pair(args.rounds, measure)
            common = dict(precision=precision, batch=batch, iters=args.iters, warmup=args.warmup,
                          score_thresh=args.score_thresh)
            emit_pair(emit, "inference.throughput", {k: [r[0] for r in v] for k, v in results.items()}, "img/s",
                      detections_per_image=results["ours"][0][2], bare_detections_per_image=results["bare"][0][2],
                      **common)
            emit_pair(emit, "inference.peak_memory", {k: [r[1] for r in v] for k, v in results.items()}, "MiB",
                      memory_source=meter.memory_source, **common)


def bench_query(args, models, meter, emit, device, gen):
    batches = query_batches(gen, 2, args.batch, args.height, args.width, device)
    for precision in args.precisions:

        def measure(name):
            model = models.get(name).eval()

            def step(i):
                inputs, boxes = batches[i % len(batches)]
                given = given_instances(boxes, args.height, args.width)
                with torch.no_grad(), autocast(device, precision):
                    outputs = model.inference(inputs, detected_instances=given)
                if name == "ours":
                    assert all(o["instances"].pred_embeddings.shape[0] == 1 for o in outputs)

            seconds, _ = meter.run(step, args.warmup, args.iters)
            return args.batch / seconds

        emit_pair(emit, "query_embedding.throughput", measure_pair(args.rounds, measure), "queries/s",
                  precision=precision, batch=args.batch, iters=args.iters, warmup=args.warmup,
                  bare_note="bare: same call without an identity branch (backbone + given boxes only)")


def reference_and_candidate(model, run, device, channels_last):
    """``run()`` in eager fp32 with contiguous (NCHW) weights and an uncompiled backbone, then under bf16 autocast
    as benchmarked (channels-last weights with ``--channels-last``, compiled backbone with ``--compile``): the fast
    path against the plain one."""
    backbone = model.backbone
    with torch.no_grad():
        try:
            model.backbone = getattr(backbone, "_orig_mod", backbone)  # torch.compile's wrapper keeps the eager one
            model.to(memory_format=torch.contiguous_format)
            ref = run()
        finally:
            model.backbone = backbone
            if channels_last:
                model.to(memory_format=torch.channels_last)
        with autocast(device, "bf16"):
            low = run()
    return ref, low


def bench_check(args, models, emit, device, gen):
    """bf16-autocast (+ channels-last) inference vs fp32 on the same inputs (ours): detections matched by IoU,
    and query boxes."""
    model = models.get("ours").eval()
    set_score_thresh(model, args.score_thresh)
    inputs = test_batches(gen, 1, args.batch, args.height, args.width, device)[0]
    ref, low = reference_and_candidate(
        model, lambda: [o["instances"].to("cpu") for o in model(inputs)], device, args.channels_last
    )
    emb_diffs, box_diffs, cosines, matched, total = [], [], [], 0, 0
    for r, lo in zip(ref, low):
        total += len(r)
        if len(r) == 0 or len(lo) == 0:
            continue
        iou = pairwise_iou(r.pred_boxes, lo.pred_boxes)
        best_iou, best = iou.max(dim=1)
        keep = best_iou >= args.match_iou
        matched += int(keep.sum())
        if keep.any():
            e_ref = r.pred_embeddings[keep]
            e_low = lo.pred_embeddings[best[keep]]
            emb_diffs.append((e_ref - e_low).abs().max())
            cosines.append((e_ref * e_low).sum(dim=1).min())
            box_diffs.append((r.pred_boxes.tensor[keep] - lo.pred_boxes.tensor[best[keep]]).abs().max())
    emb_max = float(torch.stack(emb_diffs).max()) if emb_diffs else None
    min_cosine = float(torch.stack(cosines).min()) if cosines else None
    candidate = " ".join(["bf16"] + ["channels-last"] * args.channels_last + ["compiled"] * args.compile)
    common = dict(precision=f"{candidate} vs fp32", batch=args.batch, score_thresh=args.score_thresh,
                  match_iou=args.match_iou, tolerance=args.tolerance, min_cosine_required=args.min_cosine,
                  model_state="as built (before any benchmark step)")
    emit("check.detection_embeddings.max_abs_diff", emb_max, "abs", None, min_cosine=min_cosine,
         box_max_abs_diff=float(torch.stack(box_diffs).max()) if box_diffs else None,
         matched=matched, fp32_detections=total, bf16_detections=sum(len(x) for x in low),
         within_tolerance=None if total == 0 else (  # None: no fp32 detection to compare
             matched == total and _agrees(args, emb_max, min_cosine)  # every fp32 detection has its bf16 twin
         ), **common)

    queries, boxes = query_batches(gen, 1, args.batch, args.height, args.width, device)[0]

    def embed_queries():
        given = given_instances(boxes, args.height, args.width)
        outputs = model.inference(queries, detected_instances=given)
        return torch.cat([o["instances"].pred_embeddings.cpu() for o in outputs])

    ref, low = reference_and_candidate(model, embed_queries, device, args.channels_last)
    query_max = float((ref - low).abs().max())
    query_cosine = float((ref * low).sum(dim=1).min())
    emit("check.query_embeddings.max_abs_diff", query_max, "abs", None, min_cosine=query_cosine, queries=len(ref),
         within_tolerance=_agrees(args, query_max, query_cosine), **common)


def _agrees(args, max_abs_diff, min_cosine):
    """Embeddings agree: no component differs by more than ``--tolerance`` and no pair's cosine is below
    ``--min-cosine`` (a difference spread over all 256 components stays small per component)."""
    return max_abs_diff <= args.tolerance and min_cosine >= args.min_cosine


# -------------------------------------------------------------------------------------------------- main
def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--config", default=DEFAULT_CONFIG, help="person-search config (ours); bare is derived")
    parser.add_argument("--height", type=int, help="image height (default: the config's INPUT.MIN_SIZE_TEST)")
    parser.add_argument("--width", type=int, help="image width (default: the config's INPUT.MAX_SIZE_TEST)")
    parser.add_argument("--batch", type=int, default=4, help="images per training / batched inference step")
    parser.add_argument("--iters", type=int, default=20, help="timed steps per measurement")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps before each measurement")
    parser.add_argument("--rounds", type=int, default=2,
                        help="measure bare and ours this many times each, alternating which goes first; report "
                             "medians and each round's ratio")
    parser.add_argument("--precisions", default="fp32,bf16",
                        help="comma list of fp32, bf16, fp16 (autocast; fp16 trains with a GradScaler)")
    parser.add_argument("--benchmarks", default=",".join(BENCHMARKS), help=f"comma list of {', '.join(BENCHMARKS)}")
    parser.add_argument("--proposals", type=int, help="override MODEL.RPN.POST_NMS_TOPK_TEST")
    parser.add_argument("--lr", type=float, default=0.0, help="SGD learning rate of the timed training steps")
    parser.add_argument("--score-thresh", type=float, default=0.0, help="test score threshold of both models")
    parser.add_argument("--random-output-layers", action="store_true",
                        help="keep the random RPN / box predictor output layers (default: zeroed, see "
                             "zero_output_layers; random ones give almost no proposals and detections with R50)")
    parser.add_argument("--channels-last", action="store_true",
                        help="both models' conv weights in channels-last (NHWC) memory format (MODEL.CHANNELS_LAST)")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile both models' backbones (compiled in the warmup steps: --warmup >= 1)")
    parser.add_argument("--check", action="store_true",
                        help="compare bf16-autocast inference as benchmarked (--channels-last, --compile) to eager "
                             "fp32")
    parser.add_argument("--tolerance", type=float, default=0.05,
                        help="--check: max abs difference of unit-norm embeddings counted as agreement")
    parser.add_argument("--min-cosine", type=float, default=0.99,
                        help="--check: smallest cosine between the fp32 and bf16 embedding of a box counted as agreement")
    parser.add_argument("--match-iou", type=float, default=0.9, help="--check: IoU matching bf16 to fp32 boxes")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE ...")
    args = parser.parse_args(argv)
    args.precisions = [p for p in args.precisions.split(",") if p]
    args.benchmarks = [b for b in args.benchmarks.split(",") if b]
    bad = [p for p in args.precisions if p not in PRECISIONS] + [b for b in args.benchmarks if b not in BENCHMARKS]
    if bad:
        parser.error(f"unknown precision/benchmark {bad}")
    if args.iters < 1 or args.warmup < 0 or args.batch < 1 or args.rounds < 1:
        parser.error("--iters, --batch and --rounds must be >= 1, --warmup >= 0")
    if args.compile and args.warmup < 1:
        parser.error("--compile needs --warmup >= 1 (the first call compiles)")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device available")
    args.config = os.path.abspath(args.config)
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg, bare_cfg = build_cfgs(args)
    args.height = args.height or cfg.INPUT.MIN_SIZE_TEST
    args.width = args.width or cfg.INPUT.MAX_SIZE_TEST
    device = torch.device(args.device)
    meter = Meter(device)
    emit = Emitter(args, cfg, device)
    models = Models(cfg, bare_cfg, device, args.seed, zero_outputs=not args.random_output_layers,
                    compile_backbone=args.compile)
    gen = torch.Generator().manual_seed(args.seed)
    if args.check:  # first, on the model as built: training steps (even at lr 0) move BatchNorm statistics
        bench_check(args, models, emit, device, gen)
    if "train" in args.benchmarks:
        bench_train(args, models, meter, emit, cfg, device, gen)
    if "inference" in args.benchmarks:
        bench_inference(args, models, meter, emit, device, gen)
    if "query" in args.benchmarks:
        bench_query(args, models, meter, emit, device, gen)
    return 0


if __name__ == "__main__":
    sys.exit(main())
