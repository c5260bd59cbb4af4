#!/usr/bin/env bash
# session 9: each change on its own, in one call: A = working tree, B = without the in-place addmm_, C = B with torch's loss ops
set -uo pipefail
. experiments/gpu/common.sh
export PYTHONUNBUFFERED=1 MEDTUNE_CACHE_DIR=/root/cache HF_HUB_OFFLINE=1 PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True OMP_NUM_THREADS=4 TOKENIZERS_PARALLELISM=false
R=/root/s9; rm -rf $R /root/srcA /root/srcB; mkdir -p $R
cp -r . /root/srcA; cp -r . /root/srcB; python3 - <<'PY' || exit 1
p='/root/srcB/medtune/models/fused_lora.py'; s=open(p).read(); a='out.addmm_(low, b.t(), alpha=scaling)'
assert s.count(a)==1; open(p,'w').write(s.replace(a,'out = torch.addmm(out, low, b.t(), alpha=scaling)'))
PY
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader > $R/versions.txt; lscpu | grep -m1 "Model name" >> $R/versions.txt
b() {  # LABEL SRC CONFIG [extra bench args]
  local label=$1 src=$2 c=$3; shift 3
  (cd $src && one_config_plan $c $R/$label.yaml && PYTHONPATH=/root/site:$src timeout 300 python3 -m medtune.bench --config $R/$label.yaml --warmup 3 --steps 10 --out $R/$label "$@" > $R/$label.log 2>&1; echo "$label rc=$? $(date -u +%T)" >> $R/rc.txt)
}
for c in tnorm tnorm_mb4; do
  b A_$c /root/srcA $c
  b B_$c /root/srcB $c
  b C_$c /root/srcB ${c}_tloss
done
b P_tnorm /root/srcA tnorm --profile
cd /root && tar -czf $OUT/s9.tar.gz --exclude='*/model-*' --exclude='samples.jsonl' s9
grep "^| tnorm" $R/*/results.md; cat $R/rc.txt
