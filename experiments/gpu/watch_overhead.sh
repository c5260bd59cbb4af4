#!/usr/bin/env bash
# GPU runbook for issue 34 item 4 (the watch's cost, against a control): one GPU (kind nvidia-h200 or
# nvidia-h100-x1), Gemma 3 270M (real weights), mix_watch at 1:1 (110 steps, 4 x 2048 rows, nf4, flash varlen), one
# run at a time, none beside another (the committed mix_watch measured 0.341 / 0.309 with two jobs sharing one GPU):
#   control     eval.watch=[] eval.watch_every=0 (trainer.guard off, it needs the watch)           x3
#   watch       mix_watch's watch at the defaults (64 per set, every 10 steps, eval.watch_batch_tokens=8192) x3
#   watch_rows16  the batching before token budgets (16 questions per forward, no token budget)     x1
#   watch_32k   eval.watch_batch_tokens=32768                                                       x1
# in the order control, watch, control, watch, ... (the base-score cache is cleared before each watch run, so each
# pays its base scoring: `watch/base_s`). `summarize` writes $RUNS/overhead.md: per variant the loop time, the
# watch time and the overhead against the median control, `train/loop_s / control - 1`, and the watcher's own
# `watch/overhead_frac`. Issue 34's aim: <= 10% against the control.
# The bundle is speed_watch_h200.sh's (wheels, raw data, tokenizer, GGUF), staged as there:
#   ../shared/tools/device-stage.sh /tmp/b6 --part-mib 58      # /tmp/b6: wheels/, data.tar.xz, tok.tar.xz, *.gguf
# then, in back-to-back calls (the machine forgets /root 30 s after a call):
#   bash experiments/gpu/watch_overhead.sh stage N        # N = 1..6, carry [".stage/pN"]
#   bash experiments/gpu/watch_overhead.sh setup          # carry [".stage/SHA256"]: unpack, install, start the driver
#   bash experiments/gpu/watch_overhead.sh wait 560       # until "all done"; $OUT/watch_overhead.tar.gz each time
# About 9 runs of ~70-130 s plus ~60 s of start-up each, after ~3 min of data preparation and conversion: ~25 min.
# WO_REPEATS=2 (exported into `setup`) shortens it.
set -uo pipefail
. "$(dirname "$0")/common.sh"
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
runs_env /root
B=/root/tmp/b6 GGUF=/root/tmp/b6/gemma-3-270m-q4_k_m.gguf
REPEATS=${WO_REPEATS:-3}

train() {  # name overrides...: one mix_watch 1:1 training run, alone on the GPU, into $RUNS/<name>
  local name=$1; shift
  rm -rf /root/cache/eval_base  # every watch run scores its base (watch/base_s), none reads another's
  timed "$name" 900 python3 -m medtune.train +experiment=mix_watch "model.path=$GGUF" logger=jsonl stage=train \
    seed=0 "data_mix.ratio='1:1'" eval.sanity=warn "${attention[@]}" "$@" "hydra.run.dir=$RUNS/$name"
}

runs() {
  begin_runs
  gpu_tests "$RUNS"
  attention=()  # if the flash varlen kernel failed its tests, every run uses flex
  grep -q "^gpu_tests rc=0" "$RUNS/rc.txt" || attention=(packing.attention=flex)
  timed prepare 900 python3 -m medtune.data prepare --sources kormedmcqa kormed_law genmedgpt_ko medqa_4opt medmcqa \
    pubmedqa mmlu chatdoctor_en medquad
  timed convert 600 python3 -m medtune.models convert --gguf "$GGUF"
  local off=(eval.watch=[] eval.watch_every=0 trainer.guard.protect=[])
  for r in $(seq 1 "$REPEATS"); do
    train "control_$r" "${off[@]}"
    train "watch_$r"
  done
  train watch_rows16 eval.watch_batch_size=16 eval.watch_batch_tokens=1000000000
  train watch_32k eval.watch_batch_tokens=32768
  summarize
  touch "$RUNS/ALL_DONE"
}

summarize() {  # $RUNS/overhead.md from each run's summary.json
  python3 - "$RUNS" <<'PY'
import json, statistics, sys
from pathlib import Path
runs = Path(sys.argv[1])
rows = {}
for path in sorted(runs.glob("*/summary.json")):
    s = json.loads(path.read_text())
    rows[path.parent.name] = s
control = [s["train/loop_s"] for n, s in rows.items() if n.startswith("control_") and "train/loop_s" in s]
ref = statistics.median(control) if control else float("nan")
lines = [f"median control loop {ref:.2f} s over {len(control)} runs", "",
         "| run | train/loop_s | watch/total_s | watch/base_s | vs control | watch/overhead_frac |",
         "|---|---|---|---|---|---|"]
for name, s in rows.items():
    loop = s.get("train/loop_s", float("nan"))
    lines.append(f"| {name} | {loop:.2f} | {s.get('watch/total_s', 0):.2f} | {s.get('watch/base_s', 0):.2f} | "
                 f"{loop / ref - 1:+.3f} | {s.get('watch/overhead_frac', float('nan')):.3f} |")
(runs / "overhead.md").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
PY
}

collect() { tar_runs runs watch_overhead; }

case "${1:-}" in
  stage) stage_part "$2" ;;
  setup)  # carry [".stage/SHA256"] too: the parts are checked against it
    setup_and_start "$B" experiments/gpu/watch_overhead.sh "${2:-400}" \
      torch transformers peft bitsandbytes hydra ;;
  runs) runs ;;
  wait)
    wait_header "${2:-560}"
    for f in "$RUNS"/control_*.log "$RUNS"/watch*.log; do [[ -f $f ]] || continue; echo "-- $f"
      grep -a "watch/\|loop_s\|Error" "$f" | cut -c1-300 | tail -3; done
    [[ -f $RUNS/overhead.md ]] && cat "$RUNS/overhead.md"
    wait_footer runs watch_overhead ;;
  summarize) summarize ;;
  collect) collect ;;
  *) echo "usage: $0 stage N | setup | wait [s] | summarize | collect" >&2; exit 2 ;;
esac
