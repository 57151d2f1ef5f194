"""Blocks of tokens: the pieces every block, chunk and tile method shares.

A sequence of N tokens is cut into blocks of C (the last one shorter, or zero-padded to C). Inside a block,
with S_in the state just before it, decay attention splits into three products, each using only powers
of λ of in-block distances (never λ^(-j), never a power beyond C):

    intra:  ((Q Kᵀ) ⊙ M) V,        M[i, j] = λ^(i-j) for j ≤ i
    inter:  (Q ⊙ λ^(i+1)) S_in
    carry:  S_out = λ^C S_in + (K ⊙ λ^(C-1-j))ᵀ V

so the block's outputs are c·(intra + inter). States move between blocks either one block at a time
(`carry`) or all at once by a decayed prefix sum over blocks (`incoming_states`, built on
`decayed_cumsum`), which itself works in blocks: the decay between blocks of blocks is λ^C, λ^(C·R), …,
each ≤ 1, so nothing overflows for λ = 1 and a tiny λ only underflows to true zeros.

Every function here leaves out the scale c; methods multiply by it once at the end.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from leetbench.decay import block_decay, decay_mask, decay_powers, pad_length, split_hi_lo, to_chunks

# Block length of the prefix sums over block states: a R×R decay mask per level, log_R(G) levels.
SCAN_BLOCK = 16


def _per_head(w: torch.Tensor, ndim: int) -> torch.Tensor:
    """Per-head weights w [H, *s] viewed as [1, H, 1, …, 1, *s] (ndim dims) to broadcast against [B, H, …]."""
    return w.reshape((1, w.shape[0]) + (1,) * (ndim - w.dim() - 1) + tuple(w.shape[1:]))


@dataclass(frozen=True)
class BlockDecay:
    """The decay weights of a block of `size` tokens, per head, in one dtype."""

    log_lam: torch.Tensor  # [H] float64 log λ
    mask: torch.Tensor  # [H, C, C]: λ^(i-j) for j ≤ i, else 0 (intra)
    into: torch.Tensor  # [H, C]: λ^(i+1), the carried state's weight at position i (inter)
    reach: torch.Tensor  # [H, C]: λ^(C-1-j), key j's weight in the state at the block's end (carry)
    across: torch.Tensor  # [H]: λ^C, the carried state's decay across the whole block (carry)
    across_lo: torch.Tensor  # [H]: λ^C − across, what rounding λ^C to the dtype lost (carry)

    @classmethod
    def of(cls, log_lam: torch.Tensor, size: int, dtype: torch.dtype) -> "BlockDecay":
        across, across_lo = split_hi_lo(block_decay(log_lam, size), dtype)
        return cls(log_lam, decay_mask(log_lam, size, dtype), decay_powers(log_lam, size, start=1, dtype=dtype),
                   decay_powers(log_lam, size, reverse=True, dtype=dtype), across, across_lo)

    @property
    def size(self) -> int:
        return self.into.shape[-1]

    def tail(self, m: int) -> "BlockDecay":
        """The weights of a shorter block of m tokens: slices of these (λ^(m-1-j) are the last m of reach)."""
        if m == self.size:
            return self
        return BlockDecay(self.log_lam, self.mask[:, :m, :m], self.into[:, :m], self.reach[:, self.size - m:],
                          *split_hi_lo(block_decay(self.log_lam, m), self.across.dtype))


# ---- blocks of a sequence ----------------------------------------------------------------------------

def to_blocks(x: torch.Tensor, size: int) -> torch.Tensor:
    """[B, H, N, X] → [B, H, ⌈N/size⌉, size, X], zero-padding the last block (zero k, v add nothing)."""
    return to_chunks(pad_length(x, size), size)


def from_blocks(x: torch.Tensor, n: int) -> torch.Tensor:
    """[B, H, G, C, X] → [B, H, n, X]: the first n tokens (padding dropped)."""
    B, H, G, C, X = x.shape
    return x.reshape(B, H, G * C, X)[:, :, :n]


def tail_size(n: int, size: int) -> int:
    """Tokens in the last block of a sequence of n cut into blocks of `size` (1..size)."""
    return n - (-(-n // size) - 1) * size


def start_state(initial_state: torch.Tensor | None, k: torch.Tensor, v: torch.Tensor,
                dtype: torch.dtype) -> torch.Tensor:
    """S0 [B, H, D, E] in `dtype`: the given initial state, or zeros."""
    if initial_state is not None:
        return initial_state.to(dtype)
    B, H, _, D = k.shape
    return torch.zeros(B, H, D, v.shape[-1], dtype=dtype, device=k.device)


# ---- the three in-block products -----------------------------------------------------------------------

def intra(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor,
          plus: torch.Tensor | None = None) -> torch.Tensor:
    """((Q Kᵀ) ⊙ M) V (+ plus) for blocks q, k [B, H, …, C, D], v [B, H, …, C, E]; mask [H, C, C].

    `plus` (e.g. the inter term) is added inside the last matmul (baddbmm), saving a pass over the output.
    """
    scores = (q @ k.transpose(-1, -2)).mul_(_per_head(mask, q.dim()))
    if plus is None:
        return scores @ v
    batch = scores.shape[:-2]
    out = torch.baddbmm(plus.reshape(-1, *plus.shape[-2:]), scores.reshape(-1, *scores.shape[-2:]),
                        v.expand(*batch, *v.shape[-2:]).reshape(-1, *v.shape[-2:]))
    return out.view(*batch, *out.shape[-2:])


def inter(q: torch.Tensor, state: torch.Tensor, into: torch.Tensor) -> torch.Tensor:
    """(Q ⊙ λ^(i+1)) S for q [B, H, …, C, D], the state before the block S [B, H, …, D, E]; into [H, C]."""
    return (q * _per_head(into[..., None], q.dim())) @ state


def local_state(k: torch.Tensor, v: torch.Tensor, reach: torch.Tensor) -> torch.Tensor:
    """Σ_j λ^(C-1-j) k_jᵀ v_j: a block's own state at its end, [B, H, …, D, E]; reach [H, C]."""
    return (k * _per_head(reach[..., None], k.dim())).transpose(-1, -2) @ v


def carry(state: torch.Tensor, k: torch.Tensor, v: torch.Tensor, w: BlockDecay) -> torch.Tensor:
    """S_out = λ^C S_in + Σ_j λ^(C-1-j) k_jᵀ v_j: the state after one block (k, v [B, H, C, ·]).

    λ^C is applied as hi + lo: a float32 λ^C is off by up to 2^-24 relative, and a state carried over G
    blocks would compound that to G·2^-24 (2e-6 measured at N = 65536, λ = 1 − 2^-16); hi + lo does not.
    """
    lo = _per_head(w.across_lo[:, None, None], state.dim()) * state + local_state(k, v, w.reach)
    return torch.addcmul(lo, _per_head(w.across[:, None, None], state.dim()), state)


# ---- prefix sums over blocks ---------------------------------------------------------------------------

def decayed_cumsum(x: torch.Tensor, log_a: torch.Tensor, initial: torch.Tensor | None = None,
                   block: int = SCAN_BLOCK) -> torch.Tensor:
    """y_t = a·y_{t-1} + x_t along dim 2 of x [B, H, T, F], y_{-1} = initial [B, H, F] (or 0); log_a [H] ≤ 0.

    In blocks of R = `block`: inside a block y = M x with the R×R mask M = a^(t-s); the block ends are the
    same recurrence over blocks with decay a^R (solved by the same function, so log_R(T) levels), and
    each block adds its incoming value weighted a^(i+1). Only powers of in-block distances are formed.
    """
    B, H, T, Fdim = x.shape
    if T <= block:
        y = _per_head(decay_mask(log_a, T, x.dtype), 4) @ x
        if initial is not None:
            y = y + _per_head(decay_powers(log_a, T, start=1, dtype=x.dtype)[..., None], 4) * initial[:, :, None]
        return y
    w = BlockDecay.of(log_a, block, x.dtype)
    local = _per_head(w.mask, 5) @ to_blocks(x, block)  # [B, H, G, R, F]: each block on its own
    # local[:, :, g, -1] is block g's own value at its end; the last (possibly padded) block's is never used.
    ends = decayed_cumsum(local[:, :, :-1, -1], log_a * block, initial, block)  # y at the ends of blocks 0..G-2
    first = torch.zeros_like(ends[:, :, :1]) if initial is None else initial[:, :, None]
    incoming = torch.cat([first, ends], dim=2)  # [B, H, G, F]: y just before each block
    y = local.add_(_per_head(w.into[..., None], 5) * incoming[:, :, :, None])  # local is ours: in place
    return from_blocks(y, T)


def incoming_states(local: torch.Tensor, log_lam: torch.Tensor, size: int,
                    initial: torch.Tensor | None = None, block: int = SCAN_BLOCK) -> torch.Tensor:
    """The state entering every block, [B, H, G, D, E], from each block's own state `local` [B, H, G, D, E].

    Exclusive decayed scan S_in[0] = S0 (or 0), S_in[g] = λ^size·S_in[g-1] + local[g-1]; local[G-1] is not
    used (so the last block may be a padded or short one).
    """
    B, H, G, D, E = local.shape
    first = (torch.zeros(B, H, D, E, dtype=local.dtype, device=local.device) if initial is None
             else initial.to(local.dtype))
    out = torch.empty_like(local)
    out[:, :, 0] = first
    if G > 1:
        # The inclusive scan over all G blocks (G is often a multiple of `block`: no padding), shifted by one.
        ends = decayed_cumsum(local.reshape(B, H, G, D * E), log_lam * size, first.reshape(B, H, D * E), block)
        out[:, :, 1:] = ends[:, :, :-1].reshape(B, H, G - 1, D, E)
    return out


def pad_front(x: torch.Tensor, extra: int, dim: int = 2) -> torch.Tensor:
    """Zero-pad `x` with `extra` entries at the start of `dim` (zero k, v before the sequence add nothing)."""
    if extra == 0:
        return x
    pad = [0, 0] * (x.dim() - 1 - (dim % x.dim())) + [extra, 0]
    return F.pad(x, pad)


# ---- working sets --------------------------------------------------------------------------------------

# Elements a method's per-group intermediates may hold at once: about 8 MB of float32 on a CPU (several such
# tensors stay in a last-level cache; past it, elementwise passes run at DRAM speed and time grows with the
# group size), about 128 MB on a GPU (enough work per kernel launch to fill the device).
WORKING_SET = {"cpu": 1 << 21, "cuda": 1 << 25}


def group_size(per_item: int, total: int, device: torch.device) -> int:
    """How many items of `per_item` elements each to process at once (1..total) within WORKING_SET."""
    budget = WORKING_SET.get(device.type, WORKING_SET["cuda"])
    return max(1, min(total, budget // max(1, per_item)))
