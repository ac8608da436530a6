#!/usr/bin/env python
"""Person search on detectron2's own FPN Faster R-CNN: the model-zoo config plus the identity branch.

    python projects/PersonSearchFPN/train_net.py --config-file projects/PersonSearchFPN/configs/<name>.yaml \
        [--num-gpus N] [KEY VALUE ...]
    python projects/PersonSearchFPN/train_net.py --config-file ... --eval-only MODEL.WEIGHTS <checkpoint>.pth
"""
import person_search  # noqa: F401  (adapts detectron2 and registers the plugin; import before detectron2)
from detectron2 import model_zoo
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.engine import default_argument_parser, default_setup, launch

from person_search import add_person_search_config
from person_search.engine import PersonSearchTrainer

# The detector this project extends. Its yaml ships inside the installed detectron2, where a `_BASE_` path cannot
# point portably, so it is merged here, before the project's yaml (which holds only what differs from it).
MODEL_ZOO_CONFIG = "COCO-Detection/faster_rcnn_R_50_FPN_3x.yaml"


def load_config(config_file, opts=()):
    """get_cfg -> person-search keys -> model-zoo FPN config -> project yaml -> opts (not frozen)."""
    cfg = get_cfg()
    add_person_search_config(cfg)
    cfg.merge_from_file(model_zoo.get_config_file(MODEL_ZOO_CONFIG))
    cfg.merge_from_file(config_file)
    cfg.merge_from_list(list(opts))
    return cfg


def setup(args):
    cfg = load_config(args.config_file, args.opts)
    cfg.freeze()
    default_setup(cfg, args)
    return cfg


def main(args):
    cfg = setup(args)
    if args.eval_only:
        model = PersonSearchTrainer.build_model(cfg)
        DetectionCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume)
        return PersonSearchTrainer.test(cfg, model)
    trainer = PersonSearchTrainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


if __name__ == "__main__":
    args = default_argument_parser().parse_args()
    print("Command Line Args:", args)
    launch(main, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
           dist_url=args.dist_url, args=(args,))
