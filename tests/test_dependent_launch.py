"""The programmatic-dependent launcher's argument marshalling (CPU: no driver call is made). The launch itself —
that a dependent runs early and that griddep_wait guards what it reads — is test_cupy_kernels.py's
test_dependent_launch_overlaps_and_waits, on the GPU."""

from __future__ import annotations

import ctypes

import numpy as np
import pytest

from leetbench.cuda_kernels.dependent_launch import c_argument


def test_arguments_become_the_c_values_cupy_would_pass():
    cases = [(np.int32(-5), ctypes.c_int32, -5), (np.uint32(7), ctypes.c_uint32, 7),
             (np.int64(1 << 40), ctypes.c_int64, 1 << 40), (np.float32(0.5), ctypes.c_float, 0.5),
             (np.float64(0.25), ctypes.c_double, 0.25), (0x7F00_0000_1000, ctypes.c_uint64, 0x7F00_0000_1000)]
    for value, ctype, want in cases:
        got = c_argument(value)
        assert type(got) is ctype and got.value == want, (value, got)


@pytest.mark.parametrize("bad, words", [(np.float16(1), r"dtype float16 is not one of"),
                                        (True, r"expected a numpy scalar or a Python int"),
                                        (1.5, r"expected a numpy scalar or a Python int"),
                                        ("0x10", r"expected a numpy scalar or a Python int")])
def test_an_argument_it_cannot_pass_is_named(bad, words):
    with pytest.raises(TypeError, match=words):
        c_argument(bad)
