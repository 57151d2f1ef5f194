#!/usr/bin/env bash
# One device call that checks a commit on a GPU before anything is published: the GPU tests, the harness's
# throughput targets (issue 17), the kernel variants beside the peers, Mamba-2's adapter, dispatch overhead.
#   bash scripts/device_check.sh [stage ...]      stages: tests sync harness big kernels mamba dispatch (default: all),
#   memory, profile and timeline (on demand)
# Each stage has its own time limit; logs go to $OUT/check/ and are packed into $OUT/check.tgz at the end.
set -uo pipefail
export PYTHONUNBUFFERED=1
log=${OUT:-/tmp}/check
mkdir -p "$log"
stages=${*:-tests sync harness big kernels mamba dispatch}
run() {  # run <name> <seconds> <command...>: output to $log/<name>.log, the tail to stdout
  local name=$1 limit=$2; shift 2
  local t0=$(date +%s)
  timeout -s INT "$limit" "$@" > "$log/$name.log" 2>&1
  echo "== $name: exit $? in $(( $(date +%s) - t0 )) s"; tail -n "${TAIL:-12}" "$log/$name.log"
}
for stage in $stages; do
  case $stage in
    tests)  # ~16 min on one H200: SHARD=1/4 … 4/4, a call each; or PARTS=4, all of them at once, spread over
            # the host's GPUs (6.8 min for two a GPU on two H200s; 4.3 min for eight on one), then the tests marked
            # `alone` in one process. TEST_FILES: other test files.
      suite=(python3 -m pytest -q -rfE -m "not slow" --maxfail=15 -p no:cacheprovider
             ${TEST_FILES:-tests/test_segments.py tests/test_cupy_kernels.py tests/test_peers_gpu.py
             tests/test_reference.py tests/test_inputs.py tests/test_attention.py tests/test_measure.py
             tests/test_timeline.py})
      if [ -z "${PARTS:-}" ]; then
        run tests 360 "${suite[@]}" ${SHARD:+--shard "$SHARD"}
      else
        [[ "$PARTS" =~ ^[1-9][0-9]*$ ]] \
          || { echo "device_check: PARTS=$PARTS: expected a number of parts ≥ 1, e.g. 4"; exit 2; }
        gpus=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU') || gpus=0
        slots=$(( gpus > 0 ? gpus : 1 )) t0=$(date +%s) pids=()
        for i in $(seq 1 "$PARTS"); do  # part i on GPU (i - 1) mod slots
          CUDA_VISIBLE_DEVICES=$(( (i - 1) % slots )) timeout -s INT "${TESTS_S:-540}" "${suite[@]}" \
            -m "not slow and not alone" --shard "$i/$PARTS" > "$log/tests-$i.log" 2>&1 &
          pids+=($!)
        done
        for i in $(seq 1 "$PARTS"); do
          wait "${pids[i-1]}"; rc=$?
          echo "== tests part $i/$PARTS (GPU $(( (i - 1) % slots ))): exit $rc, $(tail -n 1 "$log/tests-$i.log")"
          grep -E "^(FAILED|ERROR) " "$log/tests-$i.log"
        done
        # the tests that read how the GPU waits on the host, with the GPU to themselves
        timeout -s INT 120 "${suite[@]}" -m "not slow and alone" > "$log/tests-alone.log" 2>&1
        echo "== tests alone: exit $?, $(tail -n 1 "$log/tests-alone.log")"; grep -E "^(FAILED|ERROR) " "$log/tests-alone.log"
        echo "== tests: $PARTS parts over $gpus GPU(s) in $(( $(date +%s) - t0 )) s"
      fi ;;
    sync) run sync 50 python3 -m pytest -q -p no:cacheprovider tests/test_cupy_kernels.py -k synccheck ;;
    harness)  # the 8-problem bf16 kernel grid with one method (target ≤ 15 s after the worker starts): first
              # with an empty CuPy kernel cache (a fresh machine), then again into a new folder (cache warm)
      rm -rf /tmp/cupy-cold
      run grid 60 env CUPY_CACHE_DIR=/tmp/cupy-cold leetbench sweep=gpu_kernels device=cuda 'methods=[cupy_chunked]' \
        dtypes=[bfloat16] progress=lines out=/tmp/grid
      run grid-warm 60 env CUPY_CACHE_DIR=/tmp/cupy-cold leetbench sweep=gpu_kernels device=cuda \
        'methods=[cupy_chunked]' dtypes=[bfloat16] progress=lines out=/tmp/grid-warm
      cp /tmp/grid/results.csv "$log/grid.csv"; cp /tmp/grid-warm/results.csv "$log/grid-warm.csv" ;;
    big)  # B=8, N=65536, float32: every method that fits alone must run, none ends a false oom (Mamba-2's
          # warm-up met the harness's inputs until they were made after setup); fla and Mamba-2 compile and tune
      TAIL=14 run big 180 leetbench sweep=gpu_kernels device=cuda 'sweep.batch=[8]' 'sweep.length=[65536]' \
        dtypes=[float32] 'methods=[chunked,fla_chunk,cupy_chunked,lightning_attn2,mamba2_ssd]' \
        progress=lines out=/tmp/big
      cp /tmp/big/results.csv "$log/big.csv" ;;
    kernels) TAIL=30 run kernels 150 python3 scripts/bench_kernels.py --gen --out "$log" --batches 1,8 \
               --lengths 16384,65536 ;;  # both kernel generations, each E slice, beside the peers
    mamba) run mamba 60 python3 scripts/device_mamba_check.py ;;
    memory)  # what holds the memory where a row ends oom (float32, B=8, N=16k then 64k, the kernel stage's order)
      TAIL=60 run memory 300 python3 scripts/device_memory_probe.py ;;
    dispatch) run dispatch 30 python3 scripts/bench_dispatch.py --device cuda --dtype bfloat16 ;;
    profile)  # Nsight Compute on one warm launch of the default plan's output pass (chunk_wg2, chunk_wg4 at
              # B=8, chunk_wg32) at N=16384, B=1 and B=8 (bf16, fp32), of one consumer warpgroup (chunk_wg,
              # bf16, B=8), of two (chunk_wg2, B=8), of the pipelined output warps (PIPE) and of two output
              # warpgroups (chunk_wg3, bf16, B=8): speed of
              # light, warp states, tensor-pipe activity, and the SASS lines where warps stalled most.
              # PROFILE="bf16:8 bf16:8:pipe" picks some of them.
      for run in ${PROFILE:-bf16:1 bf16:8 fp32:1 fp32:8 bf16:8:wg1 bf16:8:wg2 bf16:8:pipe bf16:8:wg3}; do
        IFS=: read -r dt b variant <<< "$run"
        name=$dt-b$b${variant:+-$variant}
        case $variant in
          wg1) flags=(--wgs 1) ;;
          wg2) flags=(--wgs 2) ;;
          wg3) flags=(--wgs 3) ;;
          pair) flags=(--pair) ;;
          pairq) flags=(--pair --qstage) ;;
          pairqe) flags=(--pair --qstage --early) ;;
          pairqw) flags=(--pair --qstage --wide) ;;
          pipe) flags=(--pipe) ;;
          *) flags=() ;;
        esac
        call=(python3 scripts/kernel_call.py --dtype "$dt" --batch "$b" "${flags[@]}")
        ncu -k 'regex:^chunk_wg(2|3|4|32|2_tma)?$' --launch-skip 1 --launch-count 1 --section SpeedOfLight \
          --section WarpStateStats --section Occupancy --section SourceCounters --section ComputeWorkloadAnalysis \
          --section MemoryWorkloadAnalysis \
          -o "$log/$name" -f "${call[@]}" > "$log/ncu-$name.log" 2>&1
        ncu -i "$log/$name.ncu-rep" --print-summary none > "$log/ncu-$name.txt" 2>&1
        ncu -i "$log/$name.ncu-rep" --page source --print-source sass --csv > "$log/sass-$name.csv" 2>&1
        # the tensor pipes by their own counters (names differ across Nsight versions, hence the regex)
        ncu -k 'regex:^chunk_wg(2|3|4|32|2_tma)?$' --launch-skip 1 --launch-count 1 \
          --metrics 'regex:sm__pipe_tensor.*cycles_active.avg.pct_of_peak_sustained_active$' \
          "${call[@]}" > "$log/pipes-$name.txt" 2>&1
        echo "== profile $name: $(grep -h -o '^chunk_w[^:]*' "$log/ncu-$name.log" | head -1)"
        grep -h -E "Duration|DRAM Throughput|Memory Throughput|L1/TEX|Shared|Issue Slots|Warp Cycles Per Issued|Achieved Occ|sm__pipe" \
          "$log/ncu-$name.txt" "$log/pipes-$name.txt"
      done ;;
    timeline)  # where one CTA of chunk_wg2 (the B=1 rule) spends each chunk, role by role (scripts/timeline.py,
               # KERNEL_NOTES v36); TIMELINE="bf16:16384 fp16:65536:off" picks dtype:N pairs (:on / :off the
               # state transposed or not, else as the rule holds it)
      for run in ${TIMELINE:-bf16:16384 bf16:65536 fp16:16384}; do
        IFS=: read -r dt n t <<< "$run"
        TAIL=30 run "timeline-$dt-$n${t:+-$t}" 120 python3 scripts/timeline.py --dtype "$dt" --length "$n" \
          ${t:+--tstate "$t"} --out "$log/timeline-$dt-$n${t:+-$t}"
      done ;;
    *) echo "unknown stage $stage"; exit 2 ;;
  esac
done
[ -n "${OUT:-}" ] && tar czf "$OUT/check.tgz" -C "$(dirname "$log")" check && rm -rf "$log"
