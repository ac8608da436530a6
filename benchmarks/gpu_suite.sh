#!/usr/bin/env bash
# The GPU measurements of benchmarks/README.md in one command, for one `device` tool call (4 minutes on an H100 on
# 2026-11-26, the torch.compile run included, before the proposals-mode run and the rounds were added: allow 8-9;
# a call's time limit keeps every result file finished before it).
# Most important first; each result file is complete when its run ends, so a cut-off call keeps them.
#
# Here, once, with the project venv active (builds .whl/ for the GPU machine's Python 3.12):
#   bash ../shared/tools/device-wheels.sh faiss-cpu
#   python tools/install_detectron2.py --wheel-dir .whl   # the detectron2 wheel: that script's pip download of
#                                                         # pb1-detectron2 fails on current pip (direct-URL extra)
# Device call, with carry [".whl"]:  OUT_DIR=$OUT bash benchmarks/gpu_suite.sh
# Results: $OUT_DIR/*.jsonl (one JSON line per measurement) and gpu.txt (nvidia-smi).
set -uo pipefail  # a failed measurement is reported and the next one still runs
out=${OUT_DIR:?set OUT_DIR to the results folder}
iters=${ITERS:-10}
warmup=${WARMUP:-3}
rounds=${ROUNDS:-3}  # the 900x1500 C4 comparisons: bare and ours alternately, medians (single ratios varied 14 %);
                     # the other runs use model_speed.py's default of 2 rounds
mkdir -p "$out"
export PYTHONPATH=$PWD  # benchmarks/*.py import person_search from the repository root
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target .site .whl/*.whl \
    || exit 1
  export PYTHONPATH=$PWD/.site:$PWD
fi
python3 -c "import person_search, detectron2, faiss" || exit 1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$out/gpu.txt" || true

speed() {  # speed NAME [model_speed.py arguments]
  local name=$1; shift
  echo "== $name" >&2
  if python3 benchmarks/model_speed.py --device cuda --batch 4 --iters "$iters" --warmup "$warmup" "$@" \
    > "$out/$name.jsonl.part"; then
    mv "$out/$name.jsonl.part" "$out/$name.jsonl"
  else
    echo "!! $name failed (partial lines in $name.jsonl.part)" >&2
  fi
}

c4_900=configs/CUHK-SYSU/oim_R_50_C4_cuhk_sysu_900x1500.yaml
# first what is still open: inference >= 90 img/s with one res5 pass (the paper's test procedure), then the
# issue's comparison with SeqNet (fastest settings first)
speed c4_900x1500_proposals --config "$c4_900" --channels-last --precisions bf16 --benchmarks inference \
  --rounds "$rounds" MODEL.REID.EMBED_DETECTIONS_FROM proposals
speed c4_900x1500_channels_last --config "$c4_900" --check --channels-last --rounds "$rounds"
speed c4_900x1500 --config "$c4_900" --check --rounds "$rounds"
speed c4_600x1000 --check --benchmarks inference,query            # the default config, 600x1000
speed fpn_900x1500 --config configs/CUHK-SYSU/oim_R_50_FPN_cuhk_sysu.yaml --height 900 --width 1500
echo "== index" >&2
python3 benchmarks/index_speed.py --sizes 10000,100000,1000000 > "$out/index.jsonl" || echo "!! index failed" >&2
# last: compiling two R50 backbones takes minutes
speed c4_900x1500_compiled --config "$c4_900" --check --channels-last --compile --precisions bf16 \
  --benchmarks inference,query
