#!/usr/bin/env bash
# The published GPU run, on the device machine (or any GPU box with the project installed):
#   bash scripts/device_publish.sh tests kernels decode paper
# Each stage writes into results/gpu-<card>/<stage>/ (packed into $OUT/<stage>.tgz as soon as it ends, when
# $OUT is set); at the end the stages are merged into results/gpu-<card>/ (results.csv, leaderboard, plots).
# A tree copied without its .git folder: export LEETBENCH_GIT_SHA=<commit> first, so rows name their commit.
set -uo pipefail
export PYTHONUNBUFFERED=1
card=$(python3 -c "import torch; print(torch.cuda.get_device_name(0).replace(' ', '-'))")
dest=results/gpu-${card}
mkdir -p "$dest"
log=${OUT:-/tmp}
for stage in "$@"; do
  start=$(date +%s)
  case $stage in
    tests)   python3 -m pytest -q -p no:cacheprovider tests/test_cupy_kernels.py tests/test_reference.py \
               tests/test_measure.py 2>&1 | tee "$log/gpu_tests.log" | tail -15 ;;
    kernels) leetbench sweep=gpu_kernels device=cuda progress=lines out="$dest/kernels" \
               'methods=[cupy_*,fla_chunk,fla_fused_chunk,lightning_attn2,chunked]' \
               'dtypes=[bfloat16,float16,float32]' > "$log/kernels.log" 2>&1; tail -25 "$log/kernels.log" ;;
    decode)  leetbench sweep=decode device=cuda progress=lines out="$dest/decode" \
               'methods=[cupy_*,fla_fused_recurrent,recurrent]' > "$log/decode.log" 2>&1; tail -12 "$log/decode.log" ;;
    paper)   leetbench sweep=paper device=cuda progress=lines out="$dest/paper" 'exclude=[quadratic,recurrent,fla_parallel]' \
               > "$log/paper.log" 2>&1; tail -30 "$log/paper.log" ;;
    *) echo "unknown stage $stage"; exit 2 ;;
  esac
  echo "== stage $stage took $(( $(date +%s) - start )) s"
  [ -n "${OUT:-}" ] && [ -d "$dest/$stage" ] && tar czf "$OUT/$stage.tgz" "$dest/$stage"
done
runs=$(ls -d "$dest"/*/ 2>/dev/null | paste -sd, -)
[ -n "$runs" ] && leetbench report="[${runs%,}]" out="$dest" progress=none > "$log/report.log" 2>&1
[ -n "${OUT:-}" ] && ls -la "$OUT"
