"""Device-side routing alignment for grouped expert GEMMs (the role of vLLM's moe_align_block_size).

From top-k expert ids (T, k) -- or from per-expert row counts -- build, with torch ops only and no host
synchronisation (no .item()/.tolist(), no bincount/nonzero, every shape known on the host):

- `sorted_ids` (max_blocks * block_m,) int32: the rows grouped by expert, each expert's run padded to a
  multiple of block_m; entry = flat (token, slot) index t*k + slot, padding = `rows` (= T*k).
- `expert_ids` (max_blocks,) int32: the expert of each block_m-row block, -1 past the valid blocks.
- `num_valid_blocks` (1,) int32 on the device: how many blocks hold rows.
- `counts` (E,) int64: rows per expert.

`max_blocks` is a host-side upper bound, so a kernel grid can be launched without reading the device:
programs whose block is >= num_valid_blocks return at once. That keeps a whole MoE forward free of host
syncs (and CUDA-graph capturable).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

BLOCK_M_CHOICES = (16, 32, 64, 128)


@dataclass(frozen=True)
class Alignment:
    """Expert-sorted, block-padded row order plus its per-block expert map (all on the ids' device)."""

    sorted_ids: torch.Tensor  # (max_blocks * block_m,) int32, padding = rows
    expert_ids: torch.Tensor  # (max_blocks,) int32, -1 for blocks past num_valid_blocks
    num_valid_blocks: torch.Tensor  # (1,) int32
    counts: torch.Tensor  # (E,) int64
    rows: int  # T*k: the number of real rows (and the padding sentinel)
    block_m: int
    max_blocks: int  # static upper bound on the valid blocks: the grid size along M


def max_blocks(rows: int, experts: int, block_m: int) -> int:
    """Upper bound on sum_e ceil(count_e / block_m) over any routing of `rows` rows to `experts` experts.

    At most min(E, rows) experts are non-empty and each wastes at most block_m - 1 padding rows, so the
    padded total is <= rows + min(E, rows) * (block_m - 1) (never more than cdiv(rows, block_m) + E blocks)."""
    if block_m < 1:
        raise ValueError(f"block_m must be >= 1, got {block_m}")
    return (rows + min(experts, rows) * (block_m - 1)) // block_m


def choose_block_m(rows: int, experts: int, choices: tuple[int, ...] = BLOCK_M_CHOICES) -> int:
    """BLOCK_M from the average rows per non-empty expert (host ints only): small for decode, 128 for prefill."""
    live = max(1, min(experts, rows))
    per_expert = rows / live
    for block_m, limit in zip(choices, (16, 32, 96)):
        if per_expert <= limit:
            return block_m
    return choices[-1]


def _align_sorted(expert_of_row: torch.Tensor, source_of_row: torch.Tensor, counts: torch.Tensor,
                  block_m: int) -> Alignment:
    """Pad each expert's run of the already expert-sorted rows to a block_m multiple (no host sync).

    expert_of_row (R,) int64 ascending; source_of_row (R,) the id stored for each sorted row."""
    device = counts.device
    rows, experts = expert_of_row.numel(), counts.numel()
    bound = max_blocks(rows, experts, block_m)
    padded = torch.div(counts + (block_m - 1), block_m, rounding_mode="floor") * block_m
    padded_end = torch.cumsum(padded, 0)
    start = torch.cumsum(counts, 0) - counts
    dest = (padded_end - padded - start).index_select(0, expert_of_row) + torch.arange(rows, device=device)
    sorted_ids = torch.full((bound * block_m,), rows, dtype=torch.int32, device=device)
    sorted_ids.index_copy_(0, dest, source_of_row.to(torch.int32))
    block_start = torch.arange(bound, device=device, dtype=torch.int64) * block_m
    expert_ids = torch.searchsorted(padded_end, block_start, right=True)
    total = padded_end[-1:] if experts else torch.zeros(1, dtype=torch.int64, device=device)
    expert_ids = torch.where(block_start < total, expert_ids, -1).to(torch.int32)
    num_valid = torch.div(total, block_m, rounding_mode="floor").to(torch.int32)
    return Alignment(sorted_ids, expert_ids, num_valid, counts, rows, block_m, bound)


def align_topk_ids(ids: torch.Tensor, num_experts: int, block_m: int) -> Alignment:
    """Alignment of the (token, slot) rows of top-k ids (T, k); sorted_ids hold t*k + slot.

    Stable: within one expert rows keep token order. ids outside [0, num_experts) are not checked (that
    would need a host sync); they must not occur."""
    if ids.dim() != 2:
        raise ValueError(f"ids must be 2-D (tokens, k), got shape {tuple(ids.shape)}")
    flat = ids.reshape(-1).to(torch.int64)
    expert_of_row, order = torch.sort(flat, stable=True)
    counts = torch.zeros(num_experts, dtype=torch.int64, device=ids.device)
    counts.scatter_add_(0, flat, torch.ones_like(flat))
    return _align_sorted(expert_of_row, order, counts, block_m)


def align_counts(counts: torch.Tensor, block_m: int, rows: int) -> Alignment:
    """Alignment of rows already grouped by expert (counts (E,), sum = rows); sorted_ids hold row numbers.

    `rows` is passed from the host so no device value is read."""
    counts = counts.to(torch.int64)
    experts = torch.arange(counts.numel(), device=counts.device)
    expert_of_row = torch.repeat_interleave(experts, counts, output_size=rows)
    return _align_sorted(expert_of_row, torch.arange(rows, device=counts.device), counts, block_m)
