# The paper sweep as published (scripts/device_publish.sh) and as its scale-out is timed
# (scripts/device_scaleout.sh); sourced by both. bf16; the seed's CUDA causal_dot_product is left out (its
# three nvcc extensions take minutes to build on a fresh machine); one multirun job per length, longest
# first, so the launcher's GPUs finish together.
PAPER="sweep=paper dtypes=[bfloat16] exclude=[quadratic,recurrent,seed_causal_dot_product,mamba2_ssd_c64,mamba2_ssd_c256]"
PAPER_SPLIT="sweep.length=[100000],[65536],[16384],[4096],[1024],[128]"
