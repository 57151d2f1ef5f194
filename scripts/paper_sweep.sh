# The paper sweep as published (scripts/device_publish.sh) and as its scale-out is timed
# (scripts/device_scaleout.sh); sourced by both. bf16 (fp16 and float32 are further stages' work); one
# multirun job per length, longest first, so the launcher's GPUs finish together. The seed's CUDA extensions
# (about a minute of nvcc, side by side) are built by the first of its routes that needs them, once per
# machine (torch's extension cache).
PAPER="sweep=paper dtypes=[bfloat16] exclude=[quadratic,recurrent,mamba2_ssd_c64,mamba2_ssd_c256]"
PAPER_SPLIT="sweep.length=[100000],[65536],[16384],[4096],[1024],[128]"
