#!/usr/bin/env bash
# The publication's last steps, on this machine, once the device has measured the stages
# (scripts/device_publish.sh; bring its $OUT/<stage>.tgz files here). From the repository root:
#   bash scripts/publish_local.sh PREVIOUS_COMMIT [path/to/<stage>.tgz ...]
# 1. each <stage>.tgz replaces results/gpu-$CARD/<stage>/ (a stage is kernels, decode, mamba, paper or wide);
# 2. every stage folder there is merged into results/gpu-$CARD/ (results, samples, leaderboard, page, plots),
#    with "since the previous run" against the publication at PREVIOUS_COMMIT (its results.csv read from git
#    and labelled by the commit; the comparison's every pair in results/gpu-$CARD/since/);
# 3. the shipped dispatch table is regenerated from the merged rows (leetbench/dispatch_tables/);
# 4. README's tables are printed from the merged rows (scripts/readme_tables.py) for its published section.
# CARD defaults to NVIDIA-H200. Nothing is committed: read the diff, then commit.
set -euo pipefail
CARD=${CARD:-NVIDIA-H200}
STAGES=(kernels decode mamba paper wide)
[ $# -ge 1 ] || { echo "usage: bash scripts/publish_local.sh PREVIOUS_COMMIT [<stage>.tgz ...]" >&2; exit 2; }
prev=$(git rev-parse --verify --quiet "$1^{commit}") || { echo "publish_local: $1 is not a commit here" >&2; exit 2; }
shift
dest=results/gpu-$CARD
git cat-file -e "$prev:$dest/results.csv" 2>/dev/null \
  || { echo "publish_local: commit ${prev:0:7} has no $dest/results.csv (the previous publication?)" >&2; exit 2; }
for tgz in "$@"; do
  stage=$(basename "$tgz" .tgz)
  [[ " ${STAGES[*]} " == *" $stage "* ]] || { echo "publish_local: $tgz: not a stage (${STAGES[*]})" >&2; exit 2; }
  [ -f "$tgz" ] || { echo "publish_local: no file $tgz" >&2; exit 2; }
done
for tgz in "$@"; do
  stage=$(basename "$tgz" .tgz)
  rm -rf "$dest/$stage" && mkdir -p "$dest/$stage" && tar xzf "$tgz" -C "$dest/$stage"
  if [ -f "$dest/$stage/results.csv" ]; then
    echo "$dest/$stage: $(($(wc -l < "$dest/$stage/results.csv") - 1)) rows, complete (from $tgz)"
  else  # a stage cut short comes as its job folders, packed whole for resuming: the reader gets their rows and
    # reports, not the device's files (Hydra's multirun.yaml names machine paths; the runs' lock folders, logs)
    find "$dest/$stage" \( -name multirun.yaml -o -name .leetbench -o -name "*.log" \) -prune -exec rm -rf {} +
    echo "$dest/$stage: job folders only, the stage was cut short: its rows are merged, resume it on the device"
  fi
done
runs=()
for stage in "${STAGES[@]}"; do
  [ -n "$(find "$dest/$stage" -name results.csv 2>/dev/null | head -1)" ] && runs+=("gpu-$CARD/$stage")
done
[ ${#runs[@]} -gt 0 ] || { echo "publish_local: no stage folder with a results.csv in $dest" >&2; exit 2; }
# Run from a scratch folder holding the previous publication (named by its commit) and a link to the card's
# folder, so that the leaderboard names the runs by those short names, never by a path of this machine.
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir "$work/${prev:0:7}"
git show "$prev:$dest/results.csv" > "$work/${prev:0:7}/results.csv"
ln -s "$(pwd)/$dest" "$work/gpu-$CARD"
list=$(IFS=,; echo "${runs[*]}")
# (quoted: Hydra would read a short name such as 99464e7 as a number)
(cd "$work" && leetbench "report=[$list]" "since='${prev:0:7}'" "out=gpu-$CARD" progress=none)
python -m leetbench.dispatch_tables "$dest/results.csv" -o leetbench/dispatch_tables
python scripts/readme_tables.py "$dest/results.csv" --methods cupy_chunked,cupy_recurrent,fla_chunk,lightning_attn2,mamba2_ssd
