"""ExFlow's context-coherent expert parallelism (Yao et al., IPDPS 2024, arXiv 2401.08383): a
token's hidden state stays on the device of its expert after an MoE layer instead of going back
to the device it came from, so a layer needs one all-to-all (a dispatch from wherever the token
now is) instead of two; with an affinity-aware placement (`ilp_joint`) the next layer's expert
is often on the same device and the token does not move at all.

moesim's rendering (`policies.dispatch.algorithm: exflow`), per step and per EP group:

- Every token t has a current device cur(t), its source device before the first MoE layer.
- Dispatch of MoE layer l sends t once to every distinct device of its k experts other than
  cur(t) (dedup semantics, exact from the per-token ids; the diagonal holds what stays local, as
  in `dedup`) x `layout.dispatch_bytes`.
- After the experts run, t's new home is the device of its first-listed expert (column 0 of
  the ids: the top-1 expert); its other distinct destination devices send their outputs there
  (combine to the new home) x `layout.combine_bytes`. At the last MoE layer the home is the
  source again (the LM head and the sampler need the token on its owner): that combine is
  dedup's combine back to the source. A top-1 model then has no combine bytes in any layer but
  the last.
- A layer whose combine moves no byte at all launches no combine kernel (`Traffic.combine_skipped`):
  the engine charges it nothing, not even the kernel floor. For top-k > 1 this is optimistic: a
  runtime only knows that no device sends anything after the routing of the whole group.
- Attention, shared experts and dense FFNs run where the tokens are (`Traffic.residency`): layers
  up to and including the first MoE layer at the sources, MoE layer i (i >= 1) and the dense
  layers just before it where MoE layer i-1 left the tokens, layers after the last MoE layer at
  the sources again. `step_plan` rescales those rows by resident / own tokens per device (the
  device's own time per token; in serving iterations, where contexts differ by device, an
  approximation). The plan's readable op rows are not rescaled: they describe the source layout.
- Context coherence (`policies.dispatch.kv_sync`): attention of a token away from its source
  needs its sequence's KV cache there. `per_layer`: every attention layer that may run away from
  the source (every layer after the first MoE layer, up to the last MoE layer) sends each token's
  new KV entry (`memory.kv_bytes_per_token`; the MLA latent for MLA models) from the device that
  computed it to every other device of the EP group, an all-gather riding on the next MoE
  layer's dispatch (the entries of MoE layer i and of the dense layers before it ride on layer
  i's dispatch). That keeps every context complete everywhere, since a token's device in later
  steps is not known; the replicated cache's memory is not charged. `none`: contexts are taken
  to be where they are needed already (an optimistic bound).

Needs per-token expert ids (`TokenIds`), every routed row computed on the one copy of its
expert (no redundant replicas, no capacity drops), and one device per token (tp = moe_tp = 1,
no micro-batches: overlap none); `exflow_problem` names what a scenario lacks, and the plan
refuses a step without ids.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from moesim.simulator.dispatch import DispatchLayout, RowPricing, TokenIds, Traffic

NAME = "exflow"


def exflow_error(reason: str) -> str:
    """The one-paragraph error of a scenario exflow cannot simulate."""
    return (f"policies.dispatch.algorithm: {NAME} keeps each token on its expert's device between MoE layers, so it "
            f"needs every token's expert ids and one device per token, but {reason}. Use a per-token routing source "
            "(a trace, workload.routing.per_token: true with uniform/zipf, or the synthetic generator with "
            "affinity > 0), a placement without redundant replicas, no capacity drop (capacity_factor: null or "
            "overflow: keep), parallelism tp = moe_tp = 1 and overlap: none; or choose another dispatch algorithm "
            "(dedup).")


def gives_token_ids(routing) -> bool:
    """Whether a routing source draws per-token expert ids (known sources by type; others are asked
    for their first step)."""
    from moesim.workloads.load_matrix_routing import LoadMatrixRouting
    from moesim.workloads.node_limited_routing import NodeLimitedRouting, PerTokenRouting
    from moesim.workloads.routing import FixedRouting, PopularityRouting
    from moesim.workloads.synthetic_routing import SyntheticRouting
    from moesim.workloads.trace_routing import TraceRouting

    if isinstance(routing, (TraceRouting, PerTokenRouting, NodeLimitedRouting)):
        return True
    if isinstance(routing, SyntheticRouting):
        return routing.cfg.affinity > 0 or routing.per_token
    if isinstance(routing, LoadMatrixRouting):
        return all(gives_token_ids(s) for s in routing.sources)
    if isinstance(routing, (PopularityRouting, FixedRouting)):
        return False
    return None  # unknown: the plan checks each step


def exflow_problem(sc, schedule) -> tuple[str, str] | None:
    """(config field, error message) when a scenario cannot run exflow dispatch under its overlap
    `schedule`, else None."""
    pol, pl = sc.config.policies, sc.placement
    E = sc.model.moe.num_experts
    if sc.tp > 1 or sc.moe_tp > 1:
        return "parallelism", exflow_error(f"parallelism has tp={sc.tp}, moe_tp={sc.moe_tp} (a token's attention "
                                           "or experts span several devices)")
    if not schedule.token_ids:
        return "policies.overlap", exflow_error(f"overlap is '{pol.overlap}' (its micro-batches or early dispatch "
                                                "carry no per-token ids)")
    if pol.capacity_factor is not None and pol.overflow == "drop":
        return "policies.overflow", exflow_error("capacity_factor with overflow: drop may drop routed rows")
    if not (pl.slot_expert.shape[1] == E and (pl.slot_expert == np.arange(E)).all() and (pl.slot_share == 1.0).all()):
        return "placement", exflow_error("the placement has redundant expert copies (or padding slots)")
    if gives_token_ids(sc.routing) is False:
        return "workload.routing", exflow_error(f"routing '{sc.config.workload.routing.generator}' draws counts only")
    return None


@dataclass(frozen=True)
class TokenStays:
    """Dispatch where tokens stay on their top-1 expert's device between MoE layers (ExFlow).

    `kv_bytes[i]`: bytes of one token's KV entries that ride on MoE layer i's dispatch as an
    all-gather over the EP group (kv_sync per_layer); empty: none (kv_sync none)."""

    kv_bytes: tuple[float, ...] = ()
    name: str = NAME
    comm_kind: str = "all_to_all"
    stages: int = 1
    flow_from_top1: bool = True  # its moves follow each token's top-1 expert from layer to layer

    def row_cost(self, p: RowPricing) -> np.ndarray:
        return p.base * p.per_device  # dedup's dispatch; its combine to the new home is priced alike

    def inter_node_rows_per_row(self, p: RowPricing) -> float:
        return p.per_device

    def __call__(self, device_rows: np.ndarray, rows: np.ndarray, slot_device: np.ndarray, tokens: np.ndarray,
                 layout: DispatchLayout, token_ids: TokenIds | None = None) -> Traffic:
        if token_ids is None:
            raise ValueError(exflow_error("this step has no per-token expert ids (counts-only routing, a capacity "
                                          "drop or redundant replicas)"))
        n, ep = layout.num_devices, layout.ep
        Lm = len(token_ids.token_experts)
        if self.kv_bytes and len(self.kv_bytes) != Lm:
            raise ValueError(f"kv_bytes has {len(self.kv_bytes)} entries for {Lm} MoE layers")
        slot_device = np.asarray(slot_device, dtype=np.int64)
        src = np.asarray(token_ids.token_source, dtype=np.int64)
        offset = (src // ep) * ep  # first device of each token's EP group
        group = np.arange(n) // ep
        others = (group[:, None] == group[None, :]) & ~np.eye(n, dtype=bool)  # (N, N) peers in a group
        cur = src.copy()
        distinct = np.zeros((Lm, n, n))
        back = np.zeros((Lm, n, n))
        residency = np.zeros((Lm, n))
        for i, te in enumerate(token_ids.token_experts):
            residency[i] = np.bincount(cur, minlength=n)
            dev = offset[:, None] + (slot_device[i] if slot_device.ndim == 2 else slot_device)[np.asarray(te)]
            home = dev[:, 0] if i < Lm - 1 else src
            ordered = np.sort(dev, axis=1)
            first = np.ones(ordered.shape, dtype=bool)
            first[:, 1:] = ordered[:, 1:] != ordered[:, :-1]  # each token's distinct destination devices
            frm = np.broadcast_to(cur[:, None], ordered.shape)[first]
            to = np.broadcast_to(home[:, None], ordered.shape)[first]
            distinct[i] = np.bincount(frm * n + ordered[first], minlength=n * n).reshape(n, n)
            back[i] = np.bincount(ordered[first] * n + to, minlength=n * n).reshape(n, n)
            cur = home
        dispatch = distinct * layout.dispatch_bytes
        if self.kv_bytes:
            dispatch = dispatch + residency[:, :, None] * others[None] * np.asarray(self.kv_bytes)[:, None, None]
        combine = back * layout.combine_bytes
        skipped = ~(combine * ~np.eye(n, dtype=bool)).any(axis=(1, 2))  # nothing leaves any device
        return Traffic([dispatch], [combine], distinct=distinct, residency=residency, combine_skipped=skipped)
