"""Hierarchical dispatch (DeepEP normal kernels, internode): a token crosses the network once per
destination node, to the GPU of the same local rank there, which forwards it over NVLink to the
GPUs holding its experts. Tokens for the sender's own node go over NVLink directly. Combine is
the reverse: expert GPUs send to the forwarding GPU, which reduces and sends one row per
(token, node) back over the network. The two stages are pipelined (DeepEP forwards in chunks),
so a destination is done when its forwarded bytes and its forwarders' network bytes are in.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from moesim.simulator.dispatch import DispatchLayout, RowPricing, TokenIds, Traffic
from moesim.simulator.dispatch.distinct import distinct_pairs


def forwarding(layout: DispatchLayout, g: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For EP group g: (peer[s, n] group-local forwarder on group node n for source s,
    node[i] group-node of each device, selector[s, d, f] = 1 where s's token for d is forwarded by f)."""
    ep = layout.ep
    devs = np.arange(g * ep, (g + 1) * ep)
    nodes, node = np.unique(layout.node_of[devs], return_inverse=True)
    first = np.array([np.flatnonzero(node == k)[0] for k in range(nodes.size)])
    per = np.bincount(node)
    rank = layout.local_rank[devs] - layout.local_rank[devs[first[node]]]
    peer = first[None, :] + np.minimum(rank[:, None], per[None, :] - 1)  # (ep, nodes)
    cross = node[:, None] != node[None, :]  # (s, d)
    f = peer[:, node]  # (s, d): forwarder on d's node for s's tokens
    selector = np.zeros((ep, ep, ep))
    s_idx, d_idx = np.nonzero(cross)
    selector[s_idx, d_idx, f[s_idx, d_idx]] = 1.0
    return peer, node, selector


@dataclass(frozen=True)
class Hierarchical:
    name: str = "hierarchical"
    comm_kind: str = "hierarchical"
    # SMs DeepEP's normal kernels hold while compute overlaps them: Buffer.num_sms defaults to 20
    # (deepseek-ai/DeepEP deep_ep/buffer.py), as the DeepSeek-V3 report (arXiv 2412.19437, sec. 3.2.2)
    # gives 20 of an H800's 132 SMs to communication
    comm_sms: int = 20
    stages: int = 2
    flow_from_top1: bool = False

    def row_cost(self, p: RowPricing) -> np.ndarray:
        """Within a node a row costs the pair's cost x rho(experts per device); across nodes it crosses
        the network once per (token, node) to the peer GPU of the same local rank (network cost x
        rho(experts per node)) and is forwarded over NVLink to the expert's GPU."""
        node, rank, base = p.node, p.local_rank, p.base
        ep = node.size
        cost = np.where(node[:, None] == node[None, :], base * p.per_device, 0.0)
        for s in range(ep):
            for d in range(ep):
                if node[s] != node[d]:
                    on_node = np.flatnonzero(node == node[d])
                    peer = on_node[min(rank[s] - rank[on_node[0]], on_node.size - 1)]
                    cost[s, d] = base[s, peer] * p.per_node + base[peer, d] * p.per_device
        return cost

    def inter_node_rows_per_row(self, p: RowPricing) -> float:
        return p.per_node

    def __call__(self, device_rows: np.ndarray, rows: np.ndarray, slot_device: np.ndarray, tokens: np.ndarray,
                 layout: DispatchLayout, token_ids: TokenIds | None = None) -> Traffic:
        G, Lm, ep = rows.shape[0], rows.shape[1], layout.ep
        n = G * ep
        net = np.zeros((Lm, n, n))  # stage 1: over the network to the peer, or NVLink within the node
        fwd = np.zeros((Lm, n, n))  # stage 2: NVLink forwarding on the destination node
        distinct = np.zeros((Lm, n, n))
        for g in range(G):
            devs = slice(g * ep, (g + 1) * ep)
            peer, node, selector = forwarding(layout, g)
            nodes = peer.shape[1]
            per_device = distinct_pairs(rows[g], tokens[devs], slot_device, ep, token_ids, g * ep)  # (Lm, s, d)
            per_node = distinct_pairs(rows[g], tokens[devs], node[slot_device], nodes, token_ids, g * ep)  # (Lm, s, node)
            same = node[:, None] == node[None, :]
            stage1 = per_device * same  # own node: straight to the device
            for k in range(nodes):
                src = np.flatnonzero(node != k)
                np.add.at(stage1, (slice(None), src, peer[src, k]), per_node[:, src, k])
            net[:, devs, devs] = stage1
            fwd[:, devs, devs] = np.einsum("lsd,sdf->lfd", per_device, selector)
            distinct[:, devs, devs] = per_device
        db, cb = layout.dispatch_bytes, layout.combine_bytes
        return Traffic([net * db, fwd * db],
                       [np.transpose(fwd, (0, 2, 1)) * cb, np.transpose(net, (0, 2, 1)) * cb],
                       distinct=distinct)
