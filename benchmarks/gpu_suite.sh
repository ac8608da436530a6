#!/usr/bin/env bash
# The GPU measurements of benchmarks/README.md in one command, for one `device` tool call (all of them: about 6 min
# on an H100 on 2026-11-26, installation included: 4.7 min for the first seven runs, 1.3 min for the last two and
# the proposals run again).
# Most important first; each run's lines are appended when it ends, so a cut-off call keeps the finished runs.
#
# Before, once: .whl/ must hold the wheels the GPU machine (Python 3.12, with torch) lacks: detectron2's
# dependencies (yacs, pycocotools, omegaconf, hydra-core, termcolor, fvcore, iopath, antlr4-python3-runtime),
# faiss-cpu and detectron2 itself. In this project's development workplace a script outside the repository,
# ../shared/tools/device-wheels.sh (run as `bash ../shared/tools/device-wheels.sh faiss-cpu`), downloads the
# Python 3.12 wheels of those dependencies and faiss-cpu into .whl/; any other way of putting them there works, e.g.
#   pip download --only-binary=:all: --python-version 3.12 --platform manylinux_2_28_x86_64 \
#     --platform manylinux2014_x86_64 --platform any --no-deps -d .whl \
#     yacs pycocotools omegaconf hydra-core termcolor faiss-cpu
#   pip wheel --no-deps -w .whl fvcore iopath antlr4-python3-runtime==4.9.3   # pure Python, partly sources only
# and, with the project venv active, the detectron2 wheel:
#   python tools/install_detectron2.py --wheel-dir .whl
# Device call, with carry [".whl"]:  OUT_DIR=$OUT bash benchmarks/gpu_suite.sh
#   RUNS="name ..." runs only those (names below); ITERS, WARMUP, ROUNDS override the step counts.
# Results: $OUT_DIR/results.jsonl, one JSON line per measurement with the run's name in "run", appended when a run
# ends (one file: the device tool brings back at most 8), and gpu.txt (nvidia-smi).
# Exit status: 1 if a run failed or RUNS named an unknown run (after all the other runs), else 0.
set -uo pipefail  # a failed measurement is reported and the next one still runs
out=${OUT_DIR:?set OUT_DIR to the results folder}
iters=${ITERS:-10}
warmup=${WARMUP:-3}
rounds=${ROUNDS:-3}  # the 900x1500 C4 comparisons: bare and ours alternately, medians (single ratios varied 14 %);
                     # the other runs use model_speed.py's default of 2 rounds
runs=${RUNS:-"c4_900x1500_proposals c4_900x1500_channels_last c4_900x1500 c4_600x1000 fpn_900x1500 index
  c4_900x1500_compiled c4_900x1500_10_detections c4_900x1500_fp16"}
failed=""  # the runs that failed or are unknown
mkdir -p "$out"
export PYTHONPATH=$PWD  # benchmarks/*.py import person_search from the repository root
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target .site .whl/*.whl \
    || exit 1
  export PYTHONPATH=$PWD/.site:$PWD
fi
python3 -c "import person_search, detectron2, faiss" || exit 1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$out/gpu.txt" || true

keep() {  # keep NAME COMMAND...: COMMAND's JSON lines go to results.jsonl, tagged "run": NAME, once it succeeds
  local name=$1; shift
  if "$@" > "$out/$name.part" && python3 -c 'import json, sys
for line in open(sys.argv[1]):
    print(json.dumps({"run": sys.argv[2], **json.loads(line)}))' "$out/$name.part" "$name" > "$out/$name.tagged"; then
    cat "$out/$name.tagged" >> "$out/results.jsonl"  # all of a run's lines or none
    rm "$out/$name.part" "$out/$name.tagged"
  else
    rm -f "$out/$name.tagged"
    echo "!! $name failed (partial lines in $name.part)" >&2
    failed="$failed $name"
  fi
}

speed() {  # speed NAME [model_speed.py arguments]
  local name=$1; shift
  keep "$name" python3 benchmarks/model_speed.py --device cuda --batch 4 --iters "$iters" --warmup "$warmup" "$@"
}

c4_900=configs/CUHK-SYSU/oim_R_50_C4_cuhk_sysu_900x1500.yaml
for run in $runs; do
  echo "== $run" >&2
  case $run in
    # inference with one res5 pass (the paper's test procedure), checked against eager fp32 of the same mode
    c4_900x1500_proposals) speed "$run" --config "$c4_900" --check --channels-last --precisions bf16 \
      --benchmarks inference,query --rounds "$rounds" MODEL.REID.EMBED_DETECTIONS_FROM proposals ;;
    # the comparison with SeqNet (fastest settings first)
    c4_900x1500_channels_last) speed "$run" --config "$c4_900" --check --channels-last --rounds "$rounds" ;;
    c4_900x1500) speed "$run" --config "$c4_900" --check --rounds "$rounds" ;;
    c4_600x1000) speed "$run" --check --benchmarks inference,query ;;  # the default config, 600x1000
    fpn_900x1500) speed "$run" --config configs/CUHK-SYSU/oim_R_50_FPN_cuhk_sysu.yaml --height 900 --width 1500 ;;
    index) keep "$run" python3 benchmarks/index_speed.py --sizes 10000,100000,1000000 ;;
    # compiling two R50 backbones takes a minute
    c4_900x1500_compiled) speed "$run" --config "$c4_900" --check --channels-last --compile --precisions bf16 \
      --benchmarks inference,query ;;
    # a trained model's detection count (CUHK-SYSU: 96,143 boxes in 18,184 images, about 5 per image) instead of 100
    c4_900x1500_10_detections) speed "$run" --config "$c4_900" --channels-last --precisions bf16 \
      --benchmarks inference --rounds "$rounds" TEST.DETECTIONS_PER_IMAGE 10 ;;
    c4_900x1500_fp16) speed "$run" --config "$c4_900" --channels-last --precisions fp16 --benchmarks train,inference ;;
    *) echo "!! unknown run $run" >&2; failed="$failed $run" ;;
  esac
done
if [ -n "$failed" ]; then
  echo "!! failed or unknown runs:$failed" >&2
  exit 1
fi
