"""PersonSearchTrainer: detectron2's DefaultTrainer with person-search data, evaluation and mixed precision."""
import itertools
import logging
import os
from collections import OrderedDict

import torch

from detectron2.data import MetadataCatalog, build_detection_train_loader, get_detection_dataset_dicts
from detectron2.data.samplers import TrainingSampler
from detectron2.engine import DefaultTrainer
from detectron2.evaluation import print_csv_format
from detectron2.utils import comm

from person_search.config import is_crop_reid
from person_search.modeling.memory_format import apply_memory_format
from person_search.precision import amp_dtype, inference_autocast

from .hooks import RandomStateCheckpointHook
from .train_loop import MixedPrecisionTrainer, amp_dtype_from_config

__all__ = ["PersonSearchTrainer", "ResumableTrainingSampler", "require_datasets"]

logger = logging.getLogger(__name__)


class ResumableTrainingSampler(TrainingSampler):
    """detectron2's infinite TrainingSampler, started ``skip`` indices into its (seeded) stream.

    With a fixed ``cfg.SEED``, resuming at iteration ``i`` skips the ``i * images_per_worker`` indices the
    interrupted run already consumed, so the resumed run sees the batches the uninterrupted run would have seen
    (exactly so without aspect-ratio grouping, or when all images share one aspect-ratio group).
    """

    def __init__(self, size, *, skip=0, **kwargs):
        super().__init__(size, **kwargs)
        self._skip = skip

    def __iter__(self):
        yield from itertools.islice(super().__iter__(), self._skip, None)


def _check_num_labeled(cfg, dataset_dicts):
    """Fail before training if the training set has more labeled identities than the identity loss has rows."""
    if is_crop_reid(cfg):
        pids = [d["person_id"] for d in dataset_dicts]
    else:
        pids = [a.get("person_id", -1) for d in dataset_dicts for a in d.get("annotations", [])]
    num_ids = max(pids, default=-1) + 1
    capacity = cfg.MODEL.REID.OIM.NUM_LABELED if cfg.MODEL.REID.LOSS == "OIM" else cfg.MODEL.REID.SOFTMAX.NUM_CLASSES
    key = "MODEL.REID.OIM.NUM_LABELED" if cfg.MODEL.REID.LOSS == "OIM" else "MODEL.REID.SOFTMAX.NUM_CLASSES"
    if num_ids > capacity:
        raise ValueError(
            f"{cfg.DATASETS.TRAIN} has labeled person ids up to {num_ids - 1}, but {key} is {capacity}: "
            f"set {key} {num_ids}"
        )
    if num_ids < capacity:
        logger.warning(f"{key} is {capacity} but the training set labels only {num_ids} identities")


def require_datasets(cfg, key):
    """Raise ValueError if ``cfg.DATASETS.<key>`` ("TRAIN" or "TEST") names no dataset.

    detectron2 fails on an empty list with a bare ``AssertionError: ()``.
    """
    if cfg.DATASETS[key]:
        return
    # a registered set that datasets/prepare_synthetic.py writes, for the example in the message
    fmt, prefix = ("market1501", "market1501") if is_crop_reid(cfg) \
        else ("cuhk_sysu", "synthetic_cuhk_sysu")
    example = f"{prefix}_{'train' if key == 'TRAIN' else 'gallery'}"
    purpose = "train on" if key == "TRAIN" else "evaluate"
    raise ValueError(
        f"DATASETS.{key} is empty: the config names no dataset to {purpose} (the C4 and FPN configs of "
        "configs/quick_schedules/ are bases for the tests and the demo and name none). Set it to registered "
        f"datasets, e.g. DATASETS.{key} '(\"{example}\",)' after writing a synthetic set with "
        f"`python datasets/prepare_synthetic.py --format {fmt} --preset demo`"
    )


def _check_test_settings(cfg):
    """Raise on evaluation settings that would fail or mislead only when evaluation runs."""
    from person_search.evaluation import check_score_threshold

    amp_dtype(cfg.TEST.AMP_DTYPE, "TEST.AMP_DTYPE")
    batch_sizes = {
        "TEST.PERSON_SEARCH.IMS_PER_BATCH": cfg.TEST.PERSON_SEARCH.IMS_PER_BATCH,
        "TEST.REID.IMS_PER_BATCH": cfg.TEST.REID.IMS_PER_BATCH,
    }
    for key, value in batch_sizes.items():
        if value < 1:
            raise ValueError(f"{key} must be >= 1, got {value}")
    if any(getattr(MetadataCatalog.get(name), "evaluator_type", None) == "person_search" for name in cfg.DATASETS.TEST):
        check_score_threshold(cfg, cfg.TEST.PERSON_SEARCH.DET_THRESH, "TEST.PERSON_SEARCH.DET_THRESH")


class PersonSearchTrainer(DefaultTrainer):
    """Trainer for the person-search models (``train_net.py``) and the crop re-ID model of the same plugin."""

    def __init__(self, cfg):
        _check_test_settings(cfg)  # before training, not when the first evaluation starts
        super().__init__(cfg)
        # Swap in the training step with the autocast switch; model, optimizer and data loader stay the same.
        loop = self._trainer
        self._trainer = MixedPrecisionTrainer(
            loop.model, loop.data_loader, loop.optimizer, amp_dtype=amp_dtype_from_config(cfg)
        )

    @classmethod
    def build_model(cls, cfg):
        """detectron2's model, channels-last with ``MODEL.CHANNELS_LAST``."""
        return apply_memory_format(super().build_model(cfg), cfg)

    # detectron2 0.6's DefaultTrainer leaves the optimizer (momentum buffers, learning rate) and the grad scaler
    # out of its checkpoints; later releases save them like this, so a resumed run continues exactly.
    def state_dict(self):
        ret = super().state_dict()
        ret["_trainer"] = self._trainer.state_dict()
        return ret

    def load_state_dict(self, state_dict):
        super().load_state_dict(state_dict)
        if "_trainer" in state_dict:
            self._trainer.load_state_dict(state_dict["_trainer"])

    def build_hooks(self):
        # First, so that the periodic checkpointer (which saves every hook's state) sees it.
        return [RandomStateCheckpointHook()] + super().build_hooks()

    def resume_or_load(self, resume=True):
        super().resume_or_load(resume=resume)
        if self.start_iter > 0:
            self._trainer.set_data_loader(self.build_train_loader(self.cfg, start_iter=self.start_iter))

    def train(self):
        """Train, and return the results of the final evaluation (detectron2 0.6 returns them only when
        TEST.EXPECTED_RESULTS is set)."""
        super().train()
        return getattr(self, "_last_eval_results", None)

    @classmethod
    def build_train_loader(cls, cfg, start_iter=0):
        require_datasets(cfg, "TRAIN")
        dataset = get_detection_dataset_dicts(
            cfg.DATASETS.TRAIN,
            filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS,
            proposal_files=cfg.DATASETS.PROPOSAL_FILES_TRAIN if cfg.MODEL.LOAD_PROPOSALS else None,
        )
        _check_num_labeled(cfg, dataset)
        images_per_worker = cfg.SOLVER.IMS_PER_BATCH // comm.get_world_size()
        seed = cfg.SEED if cfg.SEED >= 0 else None
        sampler = ResumableTrainingSampler(len(dataset), skip=start_iter * images_per_worker, seed=seed)
        return build_detection_train_loader(cfg, dataset=dataset, mapper=cls.build_train_mapper(cfg), sampler=sampler)

    @classmethod
    def build_train_mapper(cls, cfg):
        from person_search.data import PersonSearchDatasetMapper

        if is_crop_reid(cfg):
            from person_search.data.reid_mapper import ReIDCropMapper

            return ReIDCropMapper(cfg, is_train=True)
        return PersonSearchDatasetMapper(cfg, is_train=True)

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None, use_gt_boxes=False):
        """The evaluator named by the dataset's ``evaluator_type`` metadata."""
        from person_search.evaluation import PersonSearchEvaluator, check_score_threshold

        if output_folder is None:
            output_folder = os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        meta = MetadataCatalog.get(dataset_name)
        evaluator_type = getattr(meta, "evaluator_type", None)
        if evaluator_type == "person_search":
            check_score_threshold(cfg, cfg.TEST.PERSON_SEARCH.DET_THRESH, "TEST.PERSON_SEARCH.DET_THRESH")
            return PersonSearchEvaluator(
                dataset_name,
                gallery_size=cfg.TEST.PERSON_SEARCH.GALLERY_SIZE,
                cross_camera=cfg.TEST.PERSON_SEARCH.CROSS_CAMERA,
                det_thresh=cfg.TEST.PERSON_SEARCH.DET_THRESH,
                output_dir=output_folder,
                use_gt_boxes=use_gt_boxes,
            )
        if evaluator_type == "reid":
            from person_search.evaluation.reid_evaluation import ReIDEvaluator

            query_dataset = getattr(meta, "query_dataset", None)
            if query_dataset is None:
                raise ValueError(
                    f"dataset '{dataset_name}' is a re-ID set without a query set in its metadata: put the gallery "
                    "split (e.g. market1501_gallery) in DATASETS.TEST"
                )
            return ReIDEvaluator(
                query_dataset,
                dataset_name,
                cuhk03_single_gallery_shot=getattr(meta, "cuhk03_single_gallery_shot", False),
                output_dir=output_folder,
            )
        raise NotImplementedError(
            f"dataset '{dataset_name}' has evaluator_type {evaluator_type!r}; PersonSearchTrainer evaluates "
            "'person_search' gallery sets and 'reid' gallery sets (put the gallery split in DATASETS.TEST)"
        )

    @classmethod
    def test(cls, cfg, model, evaluators=None):
        """Evaluate on every ``cfg.DATASETS.TEST`` gallery set; also with ground-truth gallery boxes if asked.

        The forward passes run under ``cfg.TEST.AMP_DTYPE`` autocast. Returns an OrderedDict
        ``{dataset_name: results}`` (``{dataset_name + "/gt_boxes": ...}`` for the ground-truth-box variant), as
        DefaultTrainer.test does.
        """
        if evaluators is not None and len(evaluators) != len(cfg.DATASETS.TEST):
            raise ValueError(f"{len(evaluators)} evaluators given for {len(cfg.DATASETS.TEST)} test datasets")
        # Evaluation draws random numbers (a DataLoader seeds itself from torch's generator): without its own
        # generator state, a run evaluated at a checkpoint iteration would continue differently from one resumed
        # from that checkpoint.
        device = next(model.parameters()).device
        cuda_devices = [device.index if device.index is not None else torch.cuda.current_device()] \
            if device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda_devices):
            results = cls._evaluate_all(cfg, model, evaluators)
        if comm.is_main_process():
            for key, value in results.items():
                logger.info(f"Evaluation results for {key} in csv format:")
                print_csv_format(value)
        return results

    @classmethod
    def _evaluate_all(cls, cfg, model, evaluators):
        results = OrderedDict()
        for i, name in enumerate(cfg.DATASETS.TEST):
            evaluator = evaluators[i] if evaluators is not None else cls.build_evaluator(cfg, name)
            with inference_autocast(cfg):
                if MetadataCatalog.get(name).evaluator_type == "reid":
                    from person_search.evaluation.reid_evaluation import build_reid_test_loader, inference_on_reid

                    results[name] = inference_on_reid(model, build_reid_test_loader(cfg, name), evaluator)
                else:
                    results.update(cls._test_person_search(cfg, model, name, evaluator))
        return results

    @classmethod
    def _test_person_search(cls, cfg, model, name, evaluator):
        from person_search.evaluation import build_person_search_test_loaders, inference_on_person_search

        variants = [(name, evaluator, False)]
        if cfg.TEST.PERSON_SEARCH.USE_GT_BOXES:
            gt_folder = os.path.join(cfg.OUTPUT_DIR, "inference", name, "gt_boxes")
            variants.append((name + "/gt_boxes", cls.build_evaluator(cfg, name, gt_folder, use_gt_boxes=True), True))
        results = {}
        for key, variant_evaluator, use_gt in variants:
            gallery_loader, query_loader = build_person_search_test_loaders(cfg, name, use_gt_boxes=use_gt)
            results[key] = inference_on_person_search(model, gallery_loader, query_loader, variant_evaluator)
        return results
