"""`python -m leetbench.dispatch_tables results/gpu-NVIDIA-H200/results.csv`: (re)make the shipped tables."""

import sys

from leetbench.dispatch import main

sys.exit(main())
