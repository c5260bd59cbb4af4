#!/usr/bin/env bash
# GPU runbook for issue 21 on one H200 (kind nvidia-h200), two back-to-back calls (64 MiB per call):
#   bash experiments/gpu/speed_iso_h200.sh install .gpu4     # carry [".gpu4"]: lm-eval and its dependencies
#   bash experiments/gpu/speed_iso_h200.sh run [CONFIG ...]  # carry [".gpu3"]: bitsandbytes, hydra, omegaconf,
#                                                            # antlr4, transformers 5.24, peft, datasets, liger, trl
# (as run on 2026-11-30, experiments/results/efficiency_h200/d_fused_isolated: the first call lacked lm-eval, which
# medtune.train imports for the watch, and was repeated with .gpu4).
# The flash varlen GPU tests, then each named configuration of experiments/efficiency/speed_h200.yaml in its own
# fresh process (Liger patches transformers globally, so configurations sharing a process are not independent; and
# each one's first step is timed from its process's start), then TRL + Liger on the first configuration's samples.
# Results: $OUT/speed_iso.tar.gz (each configuration's results.json/.md and log).
set -uo pipefail
. "$(dirname "$0")/common.sh"
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
RUNS=/root/iso; mkdir -p "$RUNS"
export PYTHONPATH=/root/site:$PWD PYTHONUNBUFFERED=1 MEDTUNE_CACHE_DIR=/root/cache HF_HUB_OFFLINE=1
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True OMP_NUM_THREADS=4 TOKENIZERS_PARALLELISM=false
install() { python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /root/site \
  "$1"/*.whl; }
case "${1:-}" in
  install) install "$2"; exit ;;
  run) shift; install .gpu3 ;;
  *) echo "usage: $0 install DIR | run [CONFIG ...]" >&2; exit 2 ;;
esac
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$RUNS/versions.txt"
python3 -c "import torch, transformers, peft, bitsandbytes, trl; print('torch', torch.__version__, '| transformers', \
transformers.__version__, '| peft', peft.__version__, '| bitsandbytes', bitsandbytes.__version__, '| trl', \
trl.__version__)" | tee -a "$RUNS/versions.txt"
timeout 200 python3 -m pytest -q -s -m gpu -p no:cacheprovider tests/models/test_varlen_attention.py \
  > "$RUNS/gpu_tests.log" 2>&1; echo "gpu_tests rc=$?"; grep -a "passed\|failed\|relative error" "$RUNS/gpu_tests.log"
configs=("$@"); (( ${#configs[@]} )) || configs=(varlen_liger_bf16 varlen_liger_bf16_peft varlen varlen_liger_bf16_compile)
peers=--peers=trl_liger
for c in "${configs[@]}"; do
  one_config_plan "$c" "$RUNS/$c.yaml"
  t0=$SECONDS
  timeout 280 python3 -m medtune.bench --config "$RUNS/$c.yaml" --warmup 3 --steps 10 --out "$RUNS/$c" $peers \
    --peer-config "$c" --peer-timeout-s 150 > "$RUNS/$c.log" 2>&1
  echo "$c rc=$? wall_s=$((SECONDS - t0))"; grep -h "^| $c \|^| peer" "$RUNS/$c/results.md"
  peers=""  # the peer runs once, beside the first configuration
done
cd /root && tar -czf "$OUT/speed_iso.tar.gz" --exclude='*/peers/model-*' --exclude='samples.jsonl' iso
