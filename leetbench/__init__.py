"""leetbench: a benchmark harness and leaderboard for exponentially decaying causal linear attention.

    S_t = λ · S_{t-1} + k_tᵀ v_t,    o_t = c · q_t S_t

A method is a function registered with `@register` in a plugin file (docs/design.md §3, README.md).
"""

from leetbench.problem import Inputs, Problem, ProblemError
from leetbench.discovery import load_methods
from leetbench.registry import Method, Registry, RegistryError, register
from leetbench.attention import decay_attention, decay_attention_step, explain

__version__ = "0.1.0"
__all__ = ["register", "load_methods", "Method", "Registry", "RegistryError", "Problem", "ProblemError",
           "Inputs", "decay_attention", "decay_attention_step", "explain", "__version__"]
