# The paper sweep as published (scripts/device_publish.sh) and as its scale-out is timed
# (scripts/device_scaleout.sh); sourced by both. bf16 (fp16 and float32 are further stages' work).
# One multirun job per group of methods, each job going through the lengths shortest first, so that
#  - a method that times out (or runs out of memory) is not tried at longer N (the runner's rule works within
#    one job: split by length, every job paid each slow route's 30-s timeout again, 376 of a 477-s job at
#    N=100000 on an H200);
#  - each route compiles in one job only, at the shortest N (Triton peers then tune again at every problem:
#    compiling and tuning fla_parallel at N=100000 first took more than its 300-s setup limit);
#  - the groups, heaviest first, keep the launcher's GPUs busy until the end.
# Every method of the sweep must be in exactly one group (tests/test_scaleout.py checks it).
PAPER="sweep=paper dtypes=[bfloat16] exclude=[quadratic,recurrent,mamba2_ssd_c64,mamba2_ssd_c256]"
PAPER_SPLIT="methods=[seed_*],[assoc_scan,fft_toeplitz,block_based,recursion,fleet_lowrank],[fla_*],[cupy_*,lightning*,mamba2*,chunked]"
