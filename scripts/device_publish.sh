#!/usr/bin/env bash
# The published GPU leaderboard, on the device machine (or any GPU box with the project installed):
#   bash scripts/device_publish.sh kernels decode paper wide mamba        (any subset, in that order;
#   paper_fp16 and paper_fp32 are the paper sweep in those dtypes)
# Each stage writes results/gpu-<card>/<stage>/; with several GPUs it runs as a multirun through
# hydra/launcher=gpus (one job per part, each on a GPU of its own; the stage folder gets the merged rows).
# A stage stops at $STAGE_S seconds (default 540) with SIGINT: finished rows are kept, and running the same
# stage again resumes it. Each stage is packed into $OUT/<stage>.tgz as it ends (machine files left out);
# at the end the stages are merged into results/gpu-<card>/ (results, samples, leaderboard, page, plots).
# A tree without .git: export LEETBENCH_GIT_SHA=<commit> first, so every row names its commit.
set -uo pipefail
export PYTHONUNBUFFERED=1
card=$(python3 -c "import torch; print(torch.cuda.get_device_name(0).replace(' ', '-'))")
gpus=$(python3 -c "import torch; print(torch.cuda.device_count())")
dest=results/gpu-${card}
log=${OUT:-/tmp}
mkdir -p "$dest"
source "$(dirname "$0")/paper_sweep.sh"  # PAPER, PAPER_SPLIT
stage_args() {  # the sweep of a stage, and how a multirun splits it into jobs
  case $1 in
    kernels) echo "sweep=gpu_kernels methods=[cupy_chunked,cupy_recurrent,fla_chunk,lightning_attn2,mamba2_ssd]" \
                  "dtypes=[bfloat16,float16,float32] |sweep.batch=[1],[8]" ;;
    decode)  echo "sweep=decode methods=[cupy_*,fla_fused_recurrent,recurrent] |sweep.batch=[1,8],[64,256]" ;;
    paper)   echo "$PAPER |$PAPER_SPLIT" ;;
    paper_fp16) echo "${PAPER/bfloat16/float16} |$PAPER_SPLIT" ;;  # the same sweep and jobs in another dtype
    paper_fp32) echo "${PAPER/bfloat16/float32} |$PAPER_SPLIT" ;;
    mamba)   echo "sweep=gpu_kernels methods=[mamba2_ssd,mamba2_ssd_c64,mamba2_ssd_c256] dtypes=[bfloat16]" \
                  "|sweep.batch=[1],[8]" ;;
    wide)    echo "sweep=gpu_wide methods=[cupy_chunked,fla_chunk,lightning_attn2,mamba2_ssd] |sweep.batch=[1],[4,8]" ;;
    *) return 1 ;;
  esac
}
for stage in "$@"; do
  spec=$(stage_args "$stage") || { echo "unknown stage $stage"; exit 2; }
  args=(${spec%%|*}) split=${spec##*|}
  start=$(date +%s)
  if [ "$gpus" -gt 1 ]; then
    timeout -s INT "${STAGE_S:-540}" leetbench -m hydra/launcher=gpus device=cuda progress=lines "${args[@]}" \
      "$split" out="$dest/$stage" > "$log/$stage.log" 2>&1
  else
    timeout -s INT "${STAGE_S:-540}" leetbench device=cuda progress=lines "${args[@]}" out="$dest/$stage" \
      > "$log/$stage.log" 2>&1
  fi
  echo "== stage $stage: exit $? in $(( $(date +%s) - start )) s on $gpus GPU(s)"; tail -n 6 "$log/$stage.log"
  # what a reader needs: the stage's merged files (job folders, Hydra's multirun.yaml and locks stay behind)
  [ -n "${OUT:-}" ] && (cd "$dest/$stage" && tar czf "$OUT/$stage.tgz" --ignore-failed-read results.csv \
    samples.csv.gz config.yaml leaderboard.csv leaderboard.md leaderboard.html plots 2>/dev/null)
done
runs=$(ls -d "$dest"/*/ 2>/dev/null | paste -sd, -)
[ -n "$runs" ] && leetbench report="[${runs%,}]" out="$dest" progress=none > "$log/report.log" 2>&1
[ -n "${OUT:-}" ] && tar czf "$OUT/report.tgz" "$dest"/*.csv "$dest"/*.md "$dest"/*.html "$dest"/*.gz "$dest"/plots \
  && ls -la "$OUT"; tail -n 25 "$log/report.log"
