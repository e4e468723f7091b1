"""Replica split stage: which copy of a replicated expert serves each source's tokens.

`global` splits every source's rows by the placement's shares. `local` (how EPLB-style
serving routes) sends a source's rows to a copy on its own device when there is one, else to
the copies on its own node, else to all copies, by their shares within that set. Local choice
is what lets a placement's cross-node benefit show up in the traffic and the simulated time.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from moesim.placement import Placement


def split_weights(placement: Placement, node_of_local: np.ndarray, choice: str) -> np.ndarray | None:
    """(layers, ep sources, slots) fraction of a source's rows for slot j's expert that go to slot j.

    None when every source uses the placement's global shares (identical for all sources)."""
    share = placement.slot_share
    if choice == "global" or not _replicated(placement):
        return None
    if choice != "local":
        raise ValueError(f"unknown replica choice '{choice}'; choose local or global")
    L, J = share.shape
    ep = placement.num_devices
    slot_dev, slot_exp = placement.slot_device, placement.slot_expert
    src = np.arange(ep)
    same_device = slot_dev[:, None, :] == src[None, :, None]  # (L, S, J)
    same_node = node_of_local[slot_dev][:, None, :] == node_of_local[src][None, :, None]
    live = (share > 0)[:, None, :]
    weights = np.zeros((L, ep, J))
    for mask in (np.broadcast_to(live, (L, ep, J)), same_node & live, same_device & live):
        # narrower sets override wider ones for every (layer, source, expert) they cover
        w = np.where(mask, share[:, None, :], 0.0)
        total = _per_expert_sum(w, slot_exp, placement.num_experts)
        covered = np.take_along_axis(total, np.broadcast_to(slot_exp[:, None, :], (L, ep, J)), axis=2)
        weights = np.where(covered > 0, np.divide(w, covered, out=np.zeros_like(w), where=covered > 0), weights)
    return weights


def _per_expert_sum(w: np.ndarray, slot_exp: np.ndarray, experts: int) -> np.ndarray:
    """(L, S, E) sum of w[l, s, j] over the slots j holding each expert."""
    L, S, J = w.shape
    out = np.zeros((L, S, experts))
    for layer in range(L):
        np.add.at(out[layer], (slice(None), slot_exp[layer]), w[layer])
    return out


def _replicated(placement: Placement) -> bool:
    """Some expert has more than one live copy."""
    live = placement.slot_share > 0
    for layer in range(placement.num_layers):
        ids = placement.slot_expert[layer][live[layer]]
        if ids.size != np.unique(ids).size:
            return True
    return False


@dataclass(frozen=True)
class ReplicaSplit:
    """Splits kept counts[l, s, e] of one EP group into rows[l, s, j] sent to each slot."""

    placement: Placement
    weights: np.ndarray | None  # from split_weights; None = global shares

    @property
    def identity(self) -> bool:
        """Slot j holds expert j with all of its tokens (no replicas, no padding)."""
        pl = self.placement
        return bool(pl.slot_expert.shape[1] == pl.num_experts
                    and (pl.slot_expert == np.arange(pl.num_experts)).all()
                    and (pl.slot_share == 1.0).all())

    def __call__(self, kept: np.ndarray) -> np.ndarray:
        """rows[l, s, j]: (token, expert) rows source s sends to slot j."""
        pl = self.placement
        per_slot = np.take_along_axis(kept, pl.slot_expert[:, None, :], axis=2)
        if self.weights is None:
            return per_slot * pl.slot_share[:, None, :]
        return per_slot * self.weights

    def slot_tokens(self, kept: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """(Lm, J) rows each slot computes; with global shares, load x share (as placement reports it)."""
        pl = self.placement
        if self.weights is None:
            load = kept.sum(axis=1).astype(float)
            return load[np.arange(pl.num_layers)[:, None], pl.slot_expert] * pl.slot_share
        return rows.sum(axis=1)
