"""Run a person-search model over a gallery loader and a query loader and evaluate it.

The counterpart of ``detectron2.evaluation.inference_on_dataset`` for the two-set protocol: gallery images are
detected (or, with ground-truth boxes, only embedded), queries are embedded from their given query box.
"""
import datetime
import logging
import time

import torch
from detectron2.data import MetadataCatalog, get_detection_dataset_dicts
from detectron2.data.build import trivial_batch_collator
from detectron2.data.common import DatasetFromList, MapDataset
from detectron2.data.samplers import InferenceSampler
from detectron2.evaluation.evaluator import inference_context
from detectron2.utils.comm import get_world_size
from detectron2.utils.logger import log_every_n_seconds
from torch.nn.parallel import DataParallel, DistributedDataParallel

__all__ = ["inference_on_person_search", "build_person_search_test_loaders", "build_batched_test_loader"]

logger = logging.getLogger(__name__)


def build_person_search_test_loaders(cfg, gallery_dataset_name, use_gt_boxes=False):
    """Test loaders ``(gallery_loader, query_loader)`` of a person-search gallery dataset.

    The query dataset is named by the gallery dataset's metadata (``query_dataset``). With ``use_gt_boxes`` the
    gallery records also carry their ground-truth boxes as ``given_instances``. Batches of
    ``cfg.TEST.PERSON_SEARCH.IMS_PER_BATCH`` images per device.
    """
    from person_search.data import PersonSearchDatasetMapper  # the data package imports this package's siblings

    query_dataset_name = MetadataCatalog.get(gallery_dataset_name).query_dataset
    gallery_mapper = PersonSearchDatasetMapper(cfg, is_train=False, gallery_gt_boxes=use_gt_boxes)
    query_mapper = PersonSearchDatasetMapper(cfg, is_train=False)
    loaders = []
    for name, mapper in ((gallery_dataset_name, gallery_mapper), (query_dataset_name, query_mapper)):
        dicts = get_detection_dataset_dicts([name], filter_empty=False)
        loaders.append(
            build_batched_test_loader(
                dicts, mapper, cfg.TEST.PERSON_SEARCH.IMS_PER_BATCH, cfg.DATALOADER.NUM_WORKERS,
                batch_size_key="TEST.PERSON_SEARCH.IMS_PER_BATCH",
            )
        )
    return tuple(loaders)


def build_batched_test_loader(dicts, mapper, batch_size, num_workers, *, batch_size_key="batch_size"):
    """A test loader over ``dicts`` mapped by ``mapper``, in batches of ``batch_size`` records (lists of dicts).

    Like detectron2's ``build_detection_test_loader`` (whose 0.6 release has no batch size): records stay in
    order, and under distributed inference each one is seen by exactly one rank (InferenceSampler).
    ``batch_size_key`` names the setting in the error for a batch size below 1.
    """
    if batch_size < 1:
        raise ValueError(f"{batch_size_key} must be >= 1, got {batch_size}")
    dataset = MapDataset(DatasetFromList(dicts, copy=False), mapper)
    batch_sampler = torch.utils.data.BatchSampler(InferenceSampler(len(dataset)), batch_size, drop_last=False)
    return torch.utils.data.DataLoader(
        dataset, batch_sampler=batch_sampler, num_workers=num_workers, collate_fn=trivial_batch_collator
    )


def inference_on_person_search(model, gallery_loader, query_loader, evaluator):
    """Run ``model`` in eval mode without gradients over both loaders and return ``evaluator.evaluate()``.

    Gallery batches go through ``model(inputs)``; when ``evaluator.use_gt_boxes`` is set, the gallery loader must
    give ``given_instances`` (ground-truth boxes) and the model only embeds them, with scores set to 1. Query
    batches are embedded from their ``given_instances`` (the query box) with ``model.inference``.

    Returns:
        the evaluator's results; ``{}`` on ranks where it returns None.
    """
    use_gt_boxes = getattr(evaluator, "use_gt_boxes", False)
    module = model.module if isinstance(model, (DataParallel, DistributedDataParallel)) else model
    evaluator.reset()
    with inference_context(model), torch.no_grad():
        _run(gallery_loader, evaluator, "gallery", lambda inputs: _gallery_outputs(module, inputs, use_gt_boxes))
        _run(query_loader, evaluator, "query", lambda inputs: _given_box_outputs(module, inputs))
    results = evaluator.evaluate()
    return {} if results is None else results


def _device(model):
    device = getattr(model, "device", None)
    if device is not None:
        return torch.device(device)
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


def _given_box_outputs(model, inputs):
    """Embeddings of each input's ``given_instances`` boxes, in original image coordinates."""
    for x in inputs:
        if "given_instances" not in x:
            raise ValueError(
                f"record '{x.get('image_id')}' has no given_instances; build its loader with PersonSearchDatasetMapper"
            )
    device = _device(model)
    given = [x["given_instances"].to(device) for x in inputs]
    return model.inference(inputs, detected_instances=given, do_postprocess=True)


def _gallery_outputs(model, inputs, use_gt_boxes):
    if not use_gt_boxes:
        return model(inputs)
    outputs = _given_box_outputs(model, inputs)
    for output in outputs:
        instances = output["instances"]
        instances.scores = torch.ones(len(instances), device=instances.pred_boxes.tensor.device)
    return outputs


def _run(loader, evaluator, name, forward):
    """Feed every batch of ``loader`` through ``forward`` into the evaluator, logging progress and time."""
    total = len(loader)
    logger.info(f"Start person-search inference on {total} {name} batches")
    start = time.perf_counter()
    compute = 0.0
    for idx, inputs in enumerate(loader):
        tic = time.perf_counter()
        outputs = forward(inputs)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        compute += time.perf_counter() - tic
        evaluator.process(inputs, outputs)
        elapsed = time.perf_counter() - start
        eta = datetime.timedelta(seconds=int(elapsed / (idx + 1) * (total - idx - 1)))
        log_every_n_seconds(
            logging.INFO,
            f"{name}: inference done {idx + 1}/{total}. {compute / (idx + 1):.4f} s/iter model. ETA={eta}",
            n=5,
        )
    elapsed = time.perf_counter() - start
    logger.info(
        f"Total {name} inference time: {datetime.timedelta(seconds=int(elapsed))} "
        f"({elapsed / max(total, 1):.6f} s / iter per device, on {get_world_size()} devices)"
    )
