#!/usr/bin/env bash
# GPU run, session 1: packing exactness in bf16, the efficiency benchmark, a MedGemma-4B-architecture QLoRA run
# through medtune.train, and FSDP with world size 1. Runs on the device machine from the repo root; results go to
# $OUT (at most 8 files). Wheels for what the GPU image lacks travel in .whl/ (see ../shared/GPU.md).
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /root/site .whl/*.whl
export PYTHONPATH=/root/site:$PWD PYTHONUNBUFFERED=1 MEDTUNE_CACHE_DIR=/root/cache MEDTUNE_RUNS_DIR=/root/runs
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
stage=${1:-all}
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -c "import torch, transformers, peft, bitsandbytes as b; print('torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__, 'bnb', b.__version__)"
} 2>&1 | tee "$OUT/env.txt"

if [[ $stage == all || $stage == tests ]]; then
  python3 -m pytest -q -s -m gpu -p no:cacheprovider tests/models/test_document_masks.py 2>&1 | tee "$OUT/gpu_tests.log"
fi
if [[ $stage == all || $stage == bench ]]; then
  python3 -m medtune.bench --steps 10 --warmup 3 --profile --out "$OUT/efficiency" 2>&1 | tee "$OUT/bench.log" | grep --line-buffered -v "it/s\]"
fi
if [[ $stage == all || $stage == train ]]; then
  common=(model=medgemma_4b model.init=random model.dtype=bfloat16 trainer.autocast_dtype=bfloat16 logger=jsonl
          eval=none data_mix=demo data_mix.upsample=true data_mix.max_repeat=16 trainer.max_steps=30 trainer.log_every=10
          trainer.micro_batch_size=1 packing=packed packing.max_seq_len=2048 trainer.progress_bar=false)
  python3 -m medtune.train "${common[@]}" quantization=nf4 hydra.run.dir=/root/runs/nf4_packed 2>&1 | tail -5
  torchrun --nproc-per-node 1 -m medtune.train "${common[@]}" quantization=nf4 sharding=fsdp \
    hydra.run.dir=/root/runs/nf4_packed_fsdp1 2>&1 | tail -5
  python3 -m medtune.train "${common[@]}" quantization=none hydra.run.dir=/root/runs/bf16_packed 2>&1 | tail -5
  python3 - "$OUT/train_summaries.json" <<'PY'
import json, sys, pathlib
keys = ("run/status", "run/error", "train/loss", "eval/loss", "train/useful_tokens_per_s", "train/padded_tokens_per_s",
        "train/mfu", "train/step_s", "sys/load/peak_alloc_gib", "sys/train/peak_alloc_gib",
        "sys/train/peak_reserved_gib", "sys/eval/peak_alloc_gib", "packing/efficiency", "model/trainable_params")
out = {}
for run in ("nf4_packed", "nf4_packed_fsdp1", "bf16_packed"):
    path = pathlib.Path("/root/runs") / run / "summary.json"
    summary = json.loads(path.read_text()) if path.exists() else {"run/status": "no summary"}
    out[run] = {k: summary.get(k) for k in keys}
pathlib.Path(sys.argv[1]).write_text(json.dumps(out, indent=1))
print(json.dumps(out, indent=1))
PY
fi
