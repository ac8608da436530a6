#!/usr/bin/env python
"""Train and evaluate person-search models (and the crop re-ID model), detectron2 style.

    python train_net.py --config-file configs/CUHK-SYSU/oim_R_50_C4_cuhk_sysu.yaml [--num-gpus 8] [KEY VALUE ...]
    python train_net.py --config-file ... --eval-only MODEL.WEIGHTS output/model_final.pth
    python train_net.py --config-file ... --resume        # continue from the last checkpoint in OUTPUT_DIR
"""
import person_search  # noqa: F401  (adapts detectron2 and registers the plugin; import before detectron2)
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.engine import default_argument_parser, default_setup, launch

from person_search import add_person_search_config
from person_search.engine import PersonSearchTrainer


def setup(args):
    cfg = get_cfg()
    add_person_search_config(cfg)
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
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
