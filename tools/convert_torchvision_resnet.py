#!/usr/bin/env python
"""Convert a torchvision ResNet checkpoint (e.g. resnet50-*.pth) to a detectron2 .pkl for MODEL.WEIGHTS.

    python tools/convert_torchvision_resnet.py resnet50.pth R-50-torchvision.pkl

Train with the converted weights using the torchvision input settings it prints (RGB, torchvision mean/std,
STRIDE_IN_1X1 False), e.g. configs/CUHK-SYSU/oim_R_50_C4_cuhk_sysu_torchvision.yaml.
"""
import argparse
import os
import shlex

import torch

from person_search.checkpoint import (
    TORCHVISION_INPUT_CONFIG,
    convert_torchvision_resnet,
    resnet_state_dict,
    save_detectron2_weights,
)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("input", help="torchvision ResNet state dict (.pth), or a training checkpoint holding one")
    parser.add_argument("output", help="detectron2 weights file to write (.pkl)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    args = parser.parse_args()
    if not os.path.isfile(args.input):
        parser.error(f"input file {args.input} does not exist")
    if os.path.exists(args.output) and not args.overwrite:
        parser.error(f"{args.output} exists; pass --overwrite to replace it")
    # torchvision's training scripts also save their argparse.Namespace: a plain container, safe to load
    with torch.serialization.safe_globals([argparse.Namespace]):
        checkpoint = torch.load(args.input, map_location="cpu", weights_only=True)
    weights = convert_torchvision_resnet(resnet_state_dict(checkpoint))
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    save_detectron2_weights(weights, args.output)
    # one line of KEY VALUE pairs to append to a train_net.py command, shell-quoted ('[123.675, ...]' is one word)
    overrides = {"MODEL.WEIGHTS": args.output, **TORCHVISION_INPUT_CONFIG}
    print(f"wrote {len(weights)} tensors to {args.output}; train with these config overrides:")
    print("  " + " ".join(f"{key} {shlex.quote(str(value))}" for key, value in overrides.items()))


if __name__ == "__main__":
    main()
