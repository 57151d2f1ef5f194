#!/usr/bin/env bash
# Scale-out (issue 17) on a host with several GPUs: the published paper sweep (scripts/paper_sweep.sh) through
# hydra/launcher=gpus, with one GPU visible (its jobs one after another) and with all of them. Each run starts
# from empty Triton and CuPy compile caches, so neither inherits the other's compilation.
#   bash scripts/device_scaleout.sh [one|all|both] [FOLDER]
#     one: one GPU only; all: all GPUs only, into FOLDER (default results/scaleout/all); both (default): one,
#     then all, and their ratio. (one and all may run in separate calls: each prints its own wall time.)
# $LIMIT_S (default 300) bounds each run (SIGINT: finished rows are kept); a run cut short has no wall time.
set -uo pipefail
export PYTHONUNBUFFERED=1
source "$(dirname "$0")/paper_sweep.sh"  # PAPER, PAPER_SPLIT
log=${OUT:-/tmp}
which=${1:-both}
all_out=${2:-results/scaleout/all}
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
report() {  # report <name> <exit> <seconds> <out>: rows of the merged file, or of the jobs' when cut short
  local files=("$4/results.csv")
  [ -f "$4/results.csv" ] || files=("$4"/*/results.csv)
  local rows=$(cat "${files[@]}" 2>/dev/null | grep -vc '^method,')
  echo "$1: $3 s wall, exit $2$([ "$2" = 0 ] || echo ' (cut short or failed: not a wall time)'), $rows rows in $4"
  tail -n 2 "$log/$1.log"
}
nvidia-smi --query-gpu=index,name --format=csv,noheader
if [ "$which" != all ]; then
  read -r n rc1 t1 <<< "$(sweep one-gpu 0 /tmp/scaleout-one)"; report one-gpu "$rc1" "$t1" /tmp/scaleout-one
fi
if [ "$which" != one ]; then
  nvidia-smi dmon -s u -d 1 > "$log/dmon.log" 2>&1 &
  dmon=$!
  gpus=$(nvidia-smi --query-gpu=index --format=csv,noheader | paste -sd, -)
  read -r n rc2 t2 <<< "$(sweep all-gpus "$gpus" "$all_out")"; report all-gpus "$rc2" "$t2" "$all_out"
  kill $dmon 2>/dev/null
  grep -h "measures on GPU" "$log/all-gpus.log" | sort | uniq -c
  python3 - "$log/dmon.log" <<'PY'
import collections, sys
busy = collections.defaultdict(list)
for line in open(sys.argv[1]):
    parts = line.split()
    if parts and parts[0].isdigit():
        busy[parts[0]].append(int(parts[1]) if parts[1].isdigit() else 0)
for gpu, sm in sorted(busy.items()):
    print(f"GPU {gpu}: {sum(s > 0 for s in sm)}/{len(sm)} s busy, mean SM utilisation {sum(sm) / max(1, len(sm)):.0f}%")
PY
fi
if [ "$which" = both ] && [ "$rc1" = 0 ] && [ "$rc2" = 0 ]; then
  python3 -c "import sys; print(f'all GPUs / one GPU = {float(sys.argv[2]) / float(sys.argv[1]):.2f} of the wall time')" "$t1" "$t2"
fi
