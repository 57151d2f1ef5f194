#!/usr/bin/env bash
# Scale-out (issue 17) on a host with several GPUs: the published paper sweep (scripts/paper_sweep.sh) through
# hydra/launcher=gpus, first with one GPU visible (its jobs one after another), then with all of them. Each
# run starts from empty Triton and CuPy compile caches, so neither inherits the other's compilation.
#   bash scripts/device_scaleout.sh [FOLDER]     FOLDER: where the all-GPU run writes (default results/scaleout/all)
# Prints both wall times, their ratio and each GPU's utilisation during the all-GPU run. $LIMIT_S (default 300)
# bounds each run (SIGINT: finished rows are kept); a run cut short has no wall time to compare.
set -uo pipefail
export PYTHONUNBUFFERED=1
source "$(dirname "$0")/paper_sweep.sh"  # PAPER, PAPER_SPLIT
log=${OUT:-/tmp}
all_out=${1:-results/scaleout/all}
read -ra args <<< "$PAPER"
sweep() {  # sweep <name> <CUDA_VISIBLE_DEVICES> <out>: prints "<name> <exit> <seconds>"
  local cache=/tmp/scaleout-cache-$1
  rm -rf "$cache" && mkdir -p "$cache"
  local t0=$(date +%s.%N)
  CUDA_VISIBLE_DEVICES=$2 TRITON_CACHE_DIR=$cache/triton CUPY_CACHE_DIR=$cache/cupy timeout -s INT "${LIMIT_S:-300}" \
    leetbench -m hydra/launcher=gpus device=cuda progress=lines "${args[@]}" "$PAPER_SPLIT" out="$3" > "$log/$1.log" 2>&1
  local rc=$?
  echo "$1 $rc $(python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.1f}')" "$t0" "$(date +%s.%N)")"
}
all=$(nvidia-smi --query-gpu=index --format=csv,noheader | paste -sd, -)
nvidia-smi --query-gpu=index,name --format=csv,noheader
one=$(sweep one-gpu 0 /tmp/scaleout-one)
nvidia-smi dmon -s u -d 1 > "$log/dmon.log" 2>&1 &
dmon=$!
many=$(sweep all-gpus "$all" "$all_out")
kill $dmon 2>/dev/null
python3 - "$one" "$many" "$log/dmon.log" <<'PY'
import collections, sys
(n1, rc1, t1), (n2, rc2, t2) = sys.argv[1].split(), sys.argv[2].split()
for name, rc, t in ((n1, rc1, t1), (n2, rc2, t2)):
    print(f"{name}: {t} s wall, exit {rc}" + ("" if rc == "0" else " (cut short or failed: no comparison)"))
if rc1 == rc2 == "0":
    print(f"all GPUs / one GPU = {float(t2) / float(t1):.2f} of the wall time")
busy = collections.defaultdict(list)
for line in open(sys.argv[3]):
    parts = line.split()
    if parts and parts[0].isdigit():
        busy[parts[0]].append(int(parts[1]) if parts[1].isdigit() else 0)
for gpu, sm in sorted(busy.items()):
    print(f"GPU {gpu}: {sum(s > 0 for s in sm)}/{len(sm)} s busy, mean SM utilisation {sum(sm) / max(1, len(sm)):.0f}%")
PY
grep -h "measures on GPU" "$log/all-gpus.log" | sort | uniq -c
for f in /tmp/scaleout-one "$all_out"; do echo "$f: $(($(wc -l < "$f/results.csv") - 1)) rows"; done
tail -n 3 "$log/one-gpu.log" "$log/all-gpus.log"
