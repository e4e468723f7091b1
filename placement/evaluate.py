"""Score a placement on a placement problem: balance, expert time, and token traffic.

The numbers every method is compared on (and the ILP optimises): per device and layer the
tokens and the modelled expert time; balancedness as mean/max device load (1 = perfect, the
figure DeepSeek's EPLB reports); dispatch tokens that leave their device or node; and, for the
layer-to-layer flow, the share of consecutive expert pairs whose devices differ.

A source's tokens for a replicated expert go where the simulator sends them: with the default
`local` replica choice, to the copy on the source's own device, else to the copies on its own
node, else to all copies (by their shares within that set; the same rule as
simulator/replica_split.py, written here on (expert, device) shares so placement does not
import the simulator). The inter-node share is priced for the dispatch algorithm recorded in
the problem's provenance (`dispatch`): one row per (token, expert) for direct, expected
distinct rows per destination device for dedup, per destination node for hierarchical.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from moesim.placement.placement import Placement
from moesim.placement.problem import PlacementProblem


@dataclass(frozen=True)
class PlacementScore:
    device_tokens: np.ndarray  # (L, D) assignments each device serves per step
    device_time: np.ndarray  # (L, D) expert time of each device (time model units)
    copies: np.ndarray  # (L, D) expert copies each device holds
    dispatch_remote: float  # share of dispatched assignments that leave their source device
    dispatch_inter_node: float  # inter-node bytes (priced for the dispatch algorithm) per dispatched row's bytes
    traffic_time: float  # summed over layers: token-seconds of dispatch + combine, per device
    flow_cross_device: float  # share of consecutive-layer expert pairs on different devices
    flow_cross_node: float

    @property
    def balancedness(self) -> float:
        """Mean over layers of mean/max device tokens (1.0 is perfectly balanced)."""
        t = self.device_tokens
        peak = t.max(axis=1)
        return float(np.mean(np.where(peak > 0, t.mean(axis=1) / np.maximum(peak, 1e-300), 1.0)))

    @property
    def bottleneck_tokens(self) -> float:
        """Sum over layers of the most loaded device's tokens."""
        return float(self.device_tokens.max(axis=1).sum())

    @property
    def bottleneck_time(self) -> float:
        """Sum over layers of the slowest device's expert time: the straggler's critical path."""
        return float(self.device_time.max(axis=1).sum())

    def as_row(self) -> dict[str, float]:
        return {
            "balancedness": self.balancedness,
            "bottleneck_tokens": self.bottleneck_tokens,
            "bottleneck_time": self.bottleneck_time,
            "max_copies": int(self.copies.max()),
            "dispatch_remote": self.dispatch_remote,
            "dispatch_inter_node": self.dispatch_inter_node,
            "traffic_time": self.traffic_time,
            "flow_cross_device": self.flow_cross_device,
            "flow_cross_node": self.flow_cross_node,
        }


def check_placement(placement: Placement, problem: PlacementProblem) -> None:
    """Raise ValueError if a placement breaks the problem: an expert without a copy, shares
    that do not sum to 1, more copies on a device than its slots, or over the copy budget."""
    if (placement.num_experts, placement.num_devices) != (problem.num_experts, problem.num_devices):
        raise ValueError(f"placement is for {placement.num_experts} experts on {placement.num_devices} devices, "
                         f"the problem has {problem.num_experts} on {problem.num_devices}")
    shares = placement.shares()
    totals = shares.sum(axis=2)
    if not np.allclose(totals, 1.0, atol=1e-6):
        l, e = np.argwhere(~np.isclose(totals, 1.0, atol=1e-6))[0]
        raise ValueError(f"layer {l} expert {e}: shares sum to {totals[l, e]:.4g}, not 1")
    copies = (shares > 0).sum(axis=1)
    over = copies > problem.slots[None, :]
    if over.any():
        l, d = np.argwhere(over)[0]
        raise ValueError(f"layer {l} device {d} holds {copies[l, d]} copies but has {problem.slots[d]} slots")
    total = copies.sum(axis=1)
    if (total > problem.budget).any():
        l = int(np.argmax(total))
        raise ValueError(f"layer {l} uses {total[l]} copies; the budget is {problem.budget} "
                         f"({problem.num_experts} experts + {problem.redundant} redundant)")


def local_split(shares: np.ndarray, node_of: np.ndarray) -> np.ndarray:
    """(S, E, D) share of source s's rows for expert e served by device d under local replica
    choice: the source's own copy, else its node's copies, else all copies, by share (one layer).

    Dense over (S, E, D): for tests and small checks; `sent_local` is the matmul form score uses."""
    E, D = shares.shape
    live = shares > 0
    out = np.broadcast_to(shares, (D, E, D)).copy()
    same_node = node_of[:, None] == node_of[None, :]
    for s in range(D):
        node_copies = np.where(same_node[s][None, :], shares, 0.0)
        node_total = node_copies.sum(axis=1)
        on_node = node_total > 0
        out[s, on_node] = node_copies[on_node] / node_total[on_node, None]
        own = live[:, s]
        out[s, own] = 0.0
        out[s, own, s] = 1.0
    return out


def sent_local(dispatch: np.ndarray, shares: np.ndarray, node_of: np.ndarray) -> np.ndarray:
    """(S, D) rows source s sends to device d in one layer under local replica choice.

    Rows for an expert with a copy on the source stay there; rows for one with copies on the
    source's node split over those (shares renormalised per node); the rest use global shares.
    Three matmuls instead of the (S, E, D) tensor, so DeepSeek-V3 scale stays cheap."""
    live = shares > 0  # (E, D)
    same_node = node_of[:, None] == node_of[None, :]  # (S, D)
    own = live.T  # (S, E): expert e has a copy on source s
    node_share = shares @ same_node.T.astype(float)  # (E, S): e's share on source s's node
    on_node = (node_share.T > 0) & ~own
    elsewhere = ~own & ~on_node
    sent = np.diag((dispatch * own).sum(axis=1))
    scaled = np.divide(dispatch, node_share.T, out=np.zeros_like(dispatch), where=on_node)
    sent += (scaled @ shares) * same_node
    sent += (dispatch * elsewhere) @ shares
    return sent


def dispatch_pricing(problem: PlacementProblem) -> tuple[str, float]:
    """(replica choice, inter-node bytes per inter-node row) from the problem's provenance.

    Problems built from a scenario record the config's dispatch (studies/placement_inputs.py);
    a problem without it (hand-built, no simulator policy) is scored as the ILP models it:
    global shares and one row's bytes per row."""
    info = problem.provenance.get("dispatch") or {}
    return str(info.get("replica_choice", "global")), float(info.get("inter_node_rows_per_row", 1.0))


def sent_rows(placement: Placement, problem: PlacementProblem, choice: str) -> np.ndarray:
    """(L, S, D) rows each source sends to each device per step, under the replica choice."""
    shares = placement.shares()  # (L, E, D)
    if choice == "global":
        return np.einsum("lse,led->lsd", problem.dispatch, shares)
    if choice != "local":
        raise ValueError(f"unknown replica choice '{choice}'; choose local or global")
    return np.stack([sent_local(problem.dispatch[l], shares[l], problem.node_of) for l in range(shares.shape[0])])


def score(placement: Placement, problem: PlacementProblem) -> PlacementScore:
    """Evaluate a placement on the problem's loads, dispatch and flow, with the replica choice
    and dispatch algorithm the simulator will use (see the module docstring)."""
    shares = placement.shares()  # (L, E, D)
    L = problem.num_layers
    if shares.shape[0] != L:
        raise ValueError(f"placement has {shares.shape[0]} MoE layers, the problem {L}")
    choice, inter_per_row = dispatch_pricing(problem)
    copies_ed = shares > 0
    sent = sent_rows(placement, problem, choice)  # (L, src, dst)
    device_tokens = sent.sum(axis=1)
    copies = copies_ed.sum(axis=1)
    tm = problem.time_model
    active = np.einsum("led,le->ld", copies_ed.astype(float), (problem.load > 0).astype(float))
    device_time = tm.time(device_tokens, active)
    total_sent = sent.sum()
    same_node = problem.node_of[:, None] == problem.node_of[None, :]
    off_diag = ~np.eye(problem.num_devices, dtype=bool)
    remote = float(sent[:, off_diag].sum() / total_sent) if total_sent else 0.0
    inter = float(inter_per_row * sent[:, ~same_node].sum() / total_sent) if total_sent else 0.0
    traffic = float(np.einsum("lsd,sd->", sent, problem.token_cost) / problem.num_devices)
    cross_dev = cross_node = 0.0
    flow_total = problem.flow.sum()
    if flow_total > 0:
        for l in range(L - 1):
            # pairs (i, j) spread over device pairs (d, d') by the two layers' shares
            dev_pairs = shares[l].T @ problem.flow[l] @ shares[l + 1]  # (D, D): two matmuls, not a 3-way einsum
            cross_dev += dev_pairs[off_diag].sum()
            cross_node += dev_pairs[~same_node].sum()
        cross_dev /= flow_total
        cross_node /= flow_total
    return PlacementScore(device_tokens, device_time, copies, remote, inter, traffic, float(cross_dev),
                          float(cross_node))
