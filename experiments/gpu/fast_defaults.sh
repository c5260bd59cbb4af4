#!/usr/bin/env bash
# GPU runbook for issue 30 on one GPU: medtune's defaults (experiments/efficiency/fast_defaults.yaml), each
# configuration in its own fresh process (`python -m medtune.bench`), unsloth and TRL + Liger beside the 8- and
# 4-row defaults on the same samples (unsloth in an environment of its own: it pins transformers <= 5.17, trl <=
# 1.15, datasets < 5), then `python -m medtune.train +experiment=paper_medgemma_4b model.init=random` for a short
# run (its log: fast paths, memory plan, tokens/s), then the GPU tests. Back-to-back calls (64 MiB each; the
# machine forgets /root 30 s after a call):
#   bash experiments/gpu/fast_defaults.sh install .gpuA       # carry [".gpuA"]: bitsandbytes (or, one call for
#   both: install_unsloth .gpuA2 .gpuC, .gpuA2 being the wheel without the CUDA 11.8-12.6 and ROCm libraries)
#   bash experiments/gpu/fast_defaults.sh unsloth .gpuC       # carry [".gpuC"]: unsloth 2026.10.9, unsloth_zoo,
#                                                             # torchao, cut_cross_entropy, tyro, trl 1.15, datasets 4
#   bash experiments/gpu/fast_defaults.sh start .gpuB         # carry [".gpuB"]: hydra, omegaconf, antlr4,
#                                                             # transformers, peft, lm-eval, datasets, liger, trl 1.16
#   bash experiments/gpu/fast_defaults.sh wait 560            # until ALL_DONE; $OUT/fast_defaults.tar.gz each time
#   bash experiments/gpu/fast_defaults.sh stop                # the driver and every process it started
# unsloth's first 8-row step compiled for 352 s on 2026-12-07: PEER_TIMEOUT_S=900 leaves it room.
# The wheels are made here with ../shared/tools/device-wheels.sh (pip download --no-deps of the names above).
# FD_CONFIGS="a b" and FD_PEERS="a=unsloth" (exported into `start`) replace the defaults below.
set -uo pipefail
. "$(dirname "$0")/common.sh"
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
SRC=/root/src RUNS=/root/fd USITE=/root/site_unsloth
export PYTHONPATH=/root/site:$SRC PYTHONUNBUFFERED=1 MEDTUNE_CACHE_DIR=/root/cache HF_HUB_OFFLINE=1
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True OMP_NUM_THREADS=4 TOKENIZERS_PARALLELISM=false
export UNSLOTH_DISABLE_STATISTICS=1 HF_DATASETS_OFFLINE=1 WANDB_MODE=disabled
# session 12 (2026-12-07): the done-when rows and the 10 GiB auto rows (TRL + Liger: its 8-row row is committed; FD_PEERS adds it)
read -ra CONFIGS <<< "${FD_CONFIGS:-defaults_8 budget_peer_8 auto_rows_10 defaults_4}"
declare -A PEERS=()
for pair in ${FD_PEERS:-defaults_8=unsloth defaults_4=unsloth}; do PEERS[${pair%%=*}]=${pair#*=}; done
PEER_TIMEOUT_S=${PEER_TIMEOUT_S:-900} STEPS=${FD_STEPS:-30}
DATA=/root/data  # the medical mix's sources for the train run: .gpudata.tgz (carried with .gpuB), see `start`

one_plan() {  # NAME OUT: fast_defaults.yaml's common overrides and configuration NAME alone; a budget_peer_N row
  # gets unsloth's peak allocated memory measured beside defaults_N in this call as its budget, when there is one
  python3 - "$1" "$2" "$RUNS" <<'PY'
import json, sys, yaml
from pathlib import Path
plan = yaml.safe_load(open("experiments/efficiency/fast_defaults.yaml"))
name, out, runs = sys.argv[1], sys.argv[2], Path(sys.argv[3])
overrides = list(plan["configurations"][name])
peer = runs / name.replace("budget_peer", "defaults") / "peers" / "unsloth.json"
if name.startswith("budget_peer") and peer.exists() and json.loads(peer.read_text()).get("peak_alloc_gib"):
    gib = json.loads(peer.read_text())["peak_alloc_gib"]
    overrides = [o for o in overrides if not o.startswith("trainer.memory_budget_gib=")]
    overrides.append(f"trainer.memory_budget_gib={gib:.2f}")
yaml.safe_dump({"common": plan["common"], "baseline": name, "configurations": {name: overrides}}, open(out, "w"))
PY
}

bench() {  # CONFIG: its own process; the peers named for it run beside it on its samples
  local c=$1 t0=$SECONDS peers=()
  one_plan "$c" "$RUNS/$c.yaml"
  [[ -n ${PEERS[$c]:-} ]] && peers=(--peers "${PEERS[$c]}" --peer-config "$c" --peer-env "unsloth=$USITE")
  timeout 1400 python3 -m medtune.bench --config "$RUNS/$c.yaml" --warmup 3 --steps "$STEPS" --out "$RUNS/$c" \
    "${peers[@]}" --peer-timeout-s "$PEER_TIMEOUT_S" > "$RUNS/$c.log" 2>&1
  echo "$c rc=$? wall_s=$((SECONDS - t0)) ended=$(date -u +%T)" >> "$RUNS/rc.txt"
}

train_run() {  # the paper's command, short, random weights, on its own medical 10:3 mix (the datasets carried)
  local t0=$SECONDS
  MEDTUNE_DATA_DIR=$DATA timeout 500 python3 -m medtune.train +experiment=paper_medgemma_4b model.init=random \
    eval=none stage=train logger=jsonl trainer.max_steps=60 trainer.log_every=5 \
    trainer.eval_batches=0 hydra.run.dir="$RUNS/train_paper" > "$RUNS/train_paper.log" 2>&1
  echo "train_paper rc=$? wall_s=$((SECONDS - t0)) ended=$(date -u +%T)" >> "$RUNS/rc.txt"
}


runs() {
  begin_runs
  [[ -d $USITE ]] || PEERS=()
  bench defaults_8; train_run  # the two done-when rows first, in case the machine is taken back
  gpu_tests "$RUNS"  # then the kernels' and the offloader's GPU tests (the offloader's had never run on a GPU)
  for c in "${CONFIGS[@]}"; do [[ $c == defaults_8 ]] || bench "$c"; done
  touch "$RUNS/ALL_DONE"
}

collect() {
  cat "$RUNS/rc.txt" 2>/dev/null; grep -h "^| \(defaults\|ckpt\|budget\|auto\|bf16\|peer\)" "$RUNS"/*/results.md 2>/dev/null
  tail -3 /root/driver.log
  cd /root && tar -czf "$OUT/fast_defaults.tar.gz" --exclude='*/peers/model-*' --exclude='samples.jsonl' \
    --exclude='*.trainer' --exclude='*/adapter' fd
}

case "${1:-}" in
  install) shift; for d in "$@"; do pip_target /root/site "$d"/*.whl || exit 1; done ;;
  unsloth) pip_target "$USITE" "$2"/*.whl ;;
  install_unsloth) pip_target /root/site "$2"/*.whl && pip_target "$USITE" "$3"/*.whl ;;  # both in one call
  start)
    pip_target /root/site "$2"/*.whl || exit 1
    # bitsandbytes, dill and multiprocess come with medtune's wheels; unsloth's environment needs them too
    [[ -d $USITE ]] && cp -r /root/site/bitsandbytes* /root/site/dill* /root/site/multiprocess* "$USITE"/
    [[ -f .gpudata.tgz ]] && mkdir -p "$DATA" && tar -xzf .gpudata.tgz -C "$DATA"
    copy_source || exit 1
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$RUNS/versions.txt"
    python3 -c "import torch, transformers, peft, bitsandbytes, trl, liger_kernel, lm_eval, medtune.train; print( \
'medtune env: torch', torch.__version__, '| transformers', transformers.__version__, '| peft', peft.__version__, \
'| bitsandbytes', bitsandbytes.__version__, '| trl', trl.__version__)" 2>&1 | tail -2 | tee -a "$RUNS/versions.txt"
    PYTHONPATH=$USITE:$SRC python3 -c "import unsloth, transformers, trl, peft, datasets; print('unsloth env: \
unsloth', unsloth.__version__, '| transformers', transformers.__version__, '| trl', trl.__version__, '| peft', \
peft.__version__, '| datasets', datasets.__version__)" 2>&1 | tail -3 | tee -a "$RUNS/versions.txt"
    start_driver "$SRC/experiments/gpu/fast_defaults.sh"
    wait_done "$RUNS" "${3:-500}"; collect ;;
  runs) runs ;;
  wait) wait_done "$RUNS" "${2:-560}"; collect ;;
  stop) stop_driver ;;  # before starting another driver: two on one GPU time each other (2026-12-07's call did)
  *) echo "usage: $0 install DIR... | unsloth DIR | start DIR [SECONDS] | wait [SECONDS] | stop" >&2; exit 2 ;;
esac
