#!/usr/bin/env bash
# Scale-out check on a host with several GPUs: the same sweep once on one GPU, then through the joblib
# launcher with one job per GPU (hydra/launcher=gpus); prints both wall times and the GPUs' utilisation.
#   bash scripts/device_scaleout.sh
set -uo pipefail
export PYTHONUNBUFFERED=1
log=${OUT:-/tmp}
args=(sweep=paper device=cuda progress=none 'methods=[chunked,lightning2,block_based,recursion]'
      'dtypes=[bfloat16]' timeout_s=60)
lengths="[16384],[32768],[65536],[100000]"
nvidia-smi --query-gpu=index,name --format=csv,noheader
t0=$(date +%s)
leetbench "${args[@]}" 'sweep.length=[16384,32768,65536,100000]' out=results/scaleout/one-gpu > "$log/one_gpu.log" 2>&1
t1=$(date +%s)
nvidia-smi dmon -s u -d 1 > "$log/dmon.log" 2>&1 &
dmon=$!
leetbench -m hydra/launcher=gpus "${args[@]}" "sweep.length=$lengths" out=results/scaleout/all-gpus \
  > "$log/all_gpus.log" 2>&1
t2=$(date +%s)
kill $dmon 2>/dev/null
echo "one GPU: $((t1 - t0)) s wall; all GPUs through hydra/launcher=gpus: $((t2 - t1)) s wall"
grep -h "measures on GPU" "$log/all_gpus.log" | sort | uniq -c
python3 - "$log/dmon.log" <<'PY'
import sys, collections
busy = collections.defaultdict(list)
for line in open(sys.argv[1]):
    parts = line.split()
    if parts and parts[0].isdigit():
        busy[parts[0]].append(int(parts[1]) if parts[1].isdigit() else 0)
for gpu, sm in sorted(busy.items()):
    print(f"GPU {gpu}: {sum(s > 0 for s in sm)}/{len(sm)} seconds busy, mean SM utilisation {sum(sm)/max(1,len(sm)):.0f}%")
PY
wc -l results/scaleout/one-gpu/results.csv results/scaleout/all-gpus/results.csv
tail -3 "$log/all_gpus.log"
tar czf "$log/scaleout.tgz" results/scaleout
