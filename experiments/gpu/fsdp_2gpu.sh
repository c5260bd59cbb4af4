#!/usr/bin/env bash
# GPU runbook for issue 17 on two H200s (kind nvidia-h200-x2): the multi-GPU path end to end.
#   (a) train_eval: 2-rank FSDP QLoRA on the Gemma 3 4B architecture (random weights, the real Gemma 3 tokenizer),
#       real data (mix_10_3), held-out loss every 10 steps, a sharded checkpoint, then lm-eval spread over the ranks
#   (d) faults: rank 1 killed at step 6 (the job must go down), resumed on 2 ranks from the step-4 sharded
#       checkpoint (must reach the uninterrupted run's loss); rank 1 stalled (the watchdog must fire on NCCL)
#   (c) LLaMA 3.3 70B architecture at full width, 2 ranks: per-rank peak against `python -m medtune.memory`
#   (b) medtune.bench: one GPU (python) against two (torchrun), experiments/efficiency/fsdp_scaling.yaml
#
# The machine lacks hydra, bitsandbytes, lm-eval, datasets, transformers 5.24 and the data; a call carries at most
# 64 MiB, so two bundles travel (made here, ignored by git):
#   .gpu1/  bitsandbytes wheel + data.tar.xz (the ../shared/data folders the runs read)
#   .gpu2/  the other wheels + tok.tar.xz (tokenizer.json/tokenizer_config.json/config.json of the converted
#           Gemma 3 270M: the Gemma 3 vocabulary, so token counts and lm-eval's logits are the real ones)
# Calls, back to back (the machine forgets /root 30 s after a call):
#   bash experiments/gpu/fsdp_2gpu.sh stage              # carry [".gpu1"]
#   bash experiments/gpu/fsdp_2gpu.sh setup_and_start    # carry [".gpu2"]; installs, prepares data, starts all runs
#   bash experiments/gpu/fsdp_2gpu.sh wait 540           # repeat until "all done"; $OUT/fsdp_2gpu.tar.gz each time
set -uo pipefail
. "$(dirname "$0")/common.sh"
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
SRC=/root/src RUNS=/root/runs
export PYTHONPATH=/root/site:$SRC PYTHONUNBUFFERED=1 MEDTUNE_CACHE_DIR=/root/cache MEDTUNE_RUNS_DIR=$RUNS
export MEDTUNE_DATA_DIR=/root/data HF_DATASETS_OFFLINE=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True OMP_NUM_THREADS=4
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1  # never NVLink multicast here
G4=(model=medgemma_4b model.init=random model.tokenizer=/root/tok/tok quantization=nf4 sharding=fsdp
    packing=packed packing.max_seq_len=2048 packing.split_long=true model.dtype=bfloat16
    trainer.autocast_dtype=bfloat16 trainer.progress_bar=false trainer.log_every=1 logger=jsonl)
FAULT=("${G4[@]}" data_mix=demo data_mix.upsample=true data_mix.max_repeat=64 eval=none trainer.micro_batch_size=2
       trainer.max_steps=8)
L70=(model=llama3_3_70b model.init=random quantization=nf4 sharding=fsdp packing=packed packing.max_seq_len=2048
     trainer.micro_batch_size=1 trainer.max_steps=10 trainer.log_every=1 trainer.progress_bar=false eval=none
     logger=jsonl data_mix=demo data_mix.upsample=true data_mix.max_repeat=64 packing.split_long=true)
TR="torchrun --nproc-per-node 2 -m medtune.train"

runs() {  # the whole plan, one after another (each wants both GPUs); every launch has a time limit
  cd "$SRC"
  timed() { local name=$1 limit=$2; shift 2; local t0=$SECONDS
    timeout "$limit" "$@" > "$RUNS/$name.log" 2>&1; echo "$name rc=$? wall_s=$((SECONDS - t0))" >> "$RUNS/rc.txt"; }
  timed a_train_eval 900 $TR +experiment=mix_10_3 "${G4[@]}" trainer.max_steps=30 trainer.eval_every=10 \
    trainer.save_every=15 eval.limit=100 data_mix.budget=500000 hydra.run.dir=$RUNS/a_train_eval
  timed d_straight 300 $TR "${FAULT[@]}" hydra.run.dir=$RUNS/d_straight
  timed d_killed 300 env MEDTUNE_TEST_FAULT=kill MEDTUNE_TEST_FAULT_STEP=6 torchrun --nproc-per-node 2 \
    tests/fixtures/faulty_train.py "${FAULT[@]}" trainer.save_every=4 sharding.timeout_min=2 hydra.run.dir=$RUNS/d_resumed
  cp "$RUNS/d_resumed/summary.json" "$RUNS/d_killed.summary.json" 2>/dev/null
  timed d_resumed 300 $TR "${FAULT[@]}" trainer.resume=auto hydra.run.dir=$RUNS/d_resumed
  timed d_stalled 300 env MEDTUNE_TEST_FAULT=stall MEDTUNE_TEST_FAULT_STEP=3 torchrun --nproc-per-node 2 \
    tests/fixtures/faulty_train.py "${FAULT[@]}" sharding.timeout_min=0.5 hydra.run.dir=$RUNS/d_stalled
  python3 -m medtune.memory "${L70[@]}" world_size=2 > "$RUNS/c_predict.log" 2>&1
  timed c_llama70b 600 $TR "${L70[@]}" hydra.run.dir=$RUNS/c_llama70b
  timed b_bench_1gpu 600 python3 -m medtune.bench --config experiments/efficiency/fsdp_scaling.yaml \
    --out "$RUNS/b_bench/1gpu"
  timed b_bench_2gpu 600 torchrun --nproc-per-node 2 -m medtune.bench \
    --config experiments/efficiency/fsdp_scaling.yaml --out "$RUNS/b_bench/2gpu"
  touch "$RUNS/ALL_DONE"
}

collect() {
  cd /root && find runs -name "*.log" -exec gzip -kf {} \;
  tar --exclude='*.safetensors' --exclude='*/checkpoints/*' --exclude='*.log' --exclude='*/hf_cache/*' \
    -czf "$OUT/fsdp_2gpu.tar.gz" runs versions.txt 2>/dev/null
  ls -la "$OUT"
}

case "${1:-}" in
  stage)
    mkdir -p /root/stage && cp .gpu1/* /root/stage/ && ls -la /root/stage
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader ;;
  setup_and_start)
    set -e
    cp .gpu2/* /root/stage/
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /root/site \
      /root/stage/*.whl
    mkdir -p /root/data /root/tok && tar -xJf /root/stage/data.tar.xz -C /root/data
    tar -xJf /root/stage/tok.tar.xz -C /root/tok
    rm -rf "$SRC" "$RUNS" && mkdir -p "$SRC" "$RUNS" && cp -r medtune experiments tests pyproject.toml "$SRC/"
    cd "$SRC"
    { nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
      python3 -c "import torch, transformers, peft, bitsandbytes, lm_eval, hydra; print('torch', torch.__version__, \
'| transformers', transformers.__version__, '| peft', peft.__version__, '| bitsandbytes', bitsandbytes.__version__, \
'| lm_eval', lm_eval.__version__, '| hydra', hydra.__version__, '| gpus', torch.cuda.device_count())"; } \
      | tee /root/versions.txt
    python3 -m medtune.data prepare --sources kormedmcqa kormed_law genmedgpt_ko medqa_4opt medmcqa pubmedqa mmlu \
      chatdoctor_en medquad 2>&1 | tail -3
    set +e  # the runs outlive this call: they run from the copy in $SRC (the work tree is replaced every call)
    start_driver "$SRC/experiments/gpu/fsdp_2gpu.sh"
    sleep 20
    bash "$0" wait "${2:-420}" ;;
  runs) runs ;;
  wait)
    wait_done "$RUNS" "${2:-540}"
    date -u +%T; nvidia-smi --query-gpu=memory.used,utilization.gpu --format=csv,noheader
    cat "$RUNS/rc.txt" 2>/dev/null
    for f in "$RUNS"/*.log; do echo "-- $f"; grep -a "train/loss\|step \|lm-eval scored\|Error\|watchdog\|rank\]" "$f" \
      | grep -v "^\s*File" | tail -4; done
    collect
    [[ -f $RUNS/ALL_DONE ]] && echo "all done" || echo "still running" ;;
  *) echo "usage: $0 stage | setup_and_start [wait_s] | wait [wait_s]" >&2; exit 2 ;;
esac
