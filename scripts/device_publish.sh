#!/usr/bin/env bash
# The published GPU leaderboard, on the device machine (or any GPU box with the project installed):
#   bash scripts/device_publish.sh kernels decode paper wide mamba        (any subset, in that order;
#   paper_fp16 and paper_fp32 are the paper sweep in those dtypes)
# Each stage writes results/gpu-<card>/<stage>/ as a multirun through hydra/launcher=gpus, split into jobs
# (by batch, or by method group for the paper sweep). Publication rows come from one job per host: the jobs run
# one after another on one GPU (the first of CUDA_VISIBLE_DEVICES), because a job beside another on the same
# host measured launch-bound rows up to 2.3x slower (docs/design.md §6). DRAFT=1 spreads them over every GPU
# of the host instead: faster, not for publication.
# A stage stops at $STAGE_S seconds (default 540) with SIGINT, and all of them by $BUDGET_S seconds after the
# start (if set; 45 s of it are kept for the merge): finished rows are kept, and running the same stage again
# resumes it (from another machine: unpack $OUT/<stage>.tgz into results/gpu-<card>/<stage>/ and send it
# along). Each stage is packed into $OUT/<stage>.tgz as it ends (machine files left out); at the end the
# stages are merged into results/gpu-<card>/ (results, samples, leaderboard, page, plots).
# A tree without .git: export LEETBENCH_GIT_SHA=<commit> first, so every row names its commit.
# Stages of many shapes first fill Triton's kernel cache for their Triton peers, a shape per CPU at once, in at
# most half of the stage's time (scripts/prewarm_peers.py: their compiling was most of the stage's device time;
# timed region and tuning unchanged); PREWARM=0 leaves that out.
set -uo pipefail
export PYTHONUNBUFFERED=1
[ "${DRAFT:-0}" = 1 ] || { first=${CUDA_VISIBLE_DEVICES:-0}; export CUDA_VISIBLE_DEVICES=${first%%,*}; }
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
prewarm_methods() {  # the stage's Triton peers whose setup compiles at every new shape (none: no prewarm)
  case $1 in
    kernels|wide) echo "fla_chunk,mamba2_ssd" ;;
  esac
}
one_commit() {  # a publication comes from one commit: rows of another in a stage folder are measured afresh
  # (a job folder holding them goes; the stage's merged files of an earlier publication, which the tree the
  # device receives carries, go with their plots, while job folders of this commit stay to be resumed)
  python3 - "$1" <<'PY'
import shutil, sys
from pathlib import Path
from leetbench.provenance import git_sha
from leetbench.store import read_results
stage, sha = Path(sys.argv[1]), git_sha()
others = set()
for csv in sorted(stage.rglob("results.csv")):
    if not csv.exists():  # went with the stage's merged files
        continue
    foreign = set(read_results([csv])["git_sha"].astype(str)) - {sha}
    if not foreign:
        continue
    others |= foreign
    if csv.parent == stage:  # the merged files: everything at the stage's top but the job folders
        for item in stage.iterdir():
            if item.is_file() or item.name == "plots":
                shutil.rmtree(item) if item.is_dir() else item.unlink()
    else:
        shutil.rmtree(csv.parent)
if others:
    print(f"{stage}: rows of commit(s) {', '.join(sorted(others))} set aside; measuring afresh at {sha}")
PY
}
t0=$(date +%s)
for stage in "$@"; do
  spec=$(stage_args "$stage") || { echo "unknown stage $stage"; exit 2; }
  limit=${STAGE_S:-540}
  if [ -n "${BUDGET_S:-}" ]; then
    left=$(( BUDGET_S - 45 - ($(date +%s) - t0) ))
    [ "$left" -lt 10 ] && { echo "== stage $stage: not started (BUDGET_S spent)"; continue; }
    [ "$left" -lt "$limit" ] && limit=$left
  fi
  one_commit "$dest/$stage"
  args=(${spec%%|*}) split=${spec##*|}
  warm=$(prewarm_methods "$stage")
  if [ "${PREWARM:-1}" = 1 ] && [ -n "$warm" ]; then
    start=$(date +%s)
    python3 "$(dirname "$0")/prewarm_peers.py" --methods "$warm" --seconds $(( limit / 2 )) --done "$dest/$stage" \
      -- "${args[@]}" "$split" device=cuda
    limit=$(( limit - ($(date +%s) - start) ))
  fi
  start=$(date +%s)
  timeout -s INT "$limit" leetbench -m hydra/launcher=gpus device=cuda progress=lines "${args[@]}" \
    "$split" out="$dest/$stage" > "$log/$stage.log" 2>&1
  echo "== stage $stage: exit $? in $(( $(date +%s) - start )) s on $gpus GPU(s)"; tail -n 6 "$log/$stage.log"
  # what a reader needs: the stage's merged files (job folders, Hydra's multirun.yaml and locks stay behind)
  # (a stage cut short has no merged files yet: then its job folders come back, to resume it from)
  if [ -n "${OUT:-}" ]; then
    if [ -f "$dest/$stage/results.csv" ]; then
      (cd "$dest/$stage" && tar czf "$OUT/$stage.tgz" --ignore-failed-read results.csv samples.csv.gz config.yaml \
        leaderboard.csv leaderboard.md leaderboard.html plots 2>/dev/null)
    else
      tar czf "$OUT/$stage.tgz" --exclude="*.lock" --exclude=.gpus -C "$dest/$stage" .
    fi
  fi
done
runs=$(ls -d "$dest"/*/ 2>/dev/null | paste -sd, -)
[ -n "$runs" ] && leetbench report="[${runs%,}]" out="$dest" progress=none > "$log/report.log" 2>&1
[ -n "${OUT:-}" ] && tar czf "$OUT/report.tgz" "$dest"/*.csv "$dest"/*.md "$dest"/*.html "$dest"/*.gz "$dest"/plots \
  && ls -la "$OUT"; tail -n 25 "$log/report.log"
