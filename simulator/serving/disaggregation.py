"""Prefill/decode disaggregation: two pools simulated in turn, joined by the KV-cache transfer.

1. The prefill pool (the first `prefill.nodes` nodes, its own parallelism) serves every request
   as a one-token request: it queues, prefills and emits the first token.
2. The KV cache of the prompt (all layers, the model's cache dtype) crosses the network to the
   decode pool: latency + bytes / bandwidth of the inter-node path, each of the prefill
   replica's tp ranks sending its share over its own NIC. Transfers are not queued behind each
   other (a stated simplification: concurrent transfers share NICs in reality).
3. The decode pool (the next `decode.nodes` nodes) receives each request when its KV has
   arrived, admits it without a prefill (`ContinuousBatcher` `transferred`) and generates the
   remaining tokens.
The two simulations are independent because the loop is open: nothing the decode pool does
changes when requests reach the prefill pool (admission back-pressure from a full decode pool
is not modelled). Token times join up per request; the aggregate metrics count the GPUs of both
pools. The run directory's phase, link and config tables are the decode pool's; the prefill
pool's iterations are in `iterations.csv` with `pool = prefill`, and its summary under
`serving.disaggregation`.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from moesim.errors import ConfigError
from moesim.simulator.config import ScenarioConfig, ScenarioFile, validate
from moesim.simulator.memory import kv_bytes_per_token
from moesim.simulator.metrics import SimResult
from moesim.simulator.scenario import Scenario, resolve
from moesim.simulator.serving.results import request_table, serving_summary
from moesim.simulator.serving.setup import rank_memory
from moesim.simulator.serving.source import request_table as traffic_table


def _pool(sc: Scenario, role: str) -> Scenario:
    """The scenario of one pool: the same config on its nodes with its parallelism, no split (its
    requests are set by the caller)."""
    cfg = sc.config
    pool = getattr(cfg.serving.disaggregation, role)
    data = cfg.as_written(exclude_none=True)
    data["hardware"]["nodes"] = pool.nodes
    data["parallelism"] = {k: v for k, v in pool.model_dump().items() if k != "nodes" and v is not None}
    data["serving"].pop("disaggregation")
    data["name"] = f"{cfg.name}-{role}"
    sf = ScenarioFile(validate(ScenarioConfig, data, sc.source.path), sc.source.path, data, sc.source.overrides)
    try:
        pool_sc = resolve(sf)
    except ConfigError as err:
        raise ConfigError(f"{err.detail} (the {role} pool of serving.disaggregation)", file=err.file,
                          field=err.field) from None
    return pool_sc


def kv_transfer_seconds(sc: Scenario, prefill_tp: int, prompt_tokens: np.ndarray) -> tuple[np.ndarray, float, float]:
    """Seconds to move each request's prompt KV from the prefill to the decode pool, the path's
    bandwidth (bytes/s per rank) and the KV bytes per token (all layers)."""
    per_token = sum(kv_bytes_per_token(sc.model, layer, 1) for layer in range(sc.model.num_layers))
    routes = sc.routes
    per_node = sc.cluster.node.devices_per_node
    src, dst = 0, per_node * sc.config.serving.disaggregation.prefill.nodes  # first GPU of each pool
    if dst >= routes.num_devices:
        raise ConfigError("the decode pool has no nodes left in the cluster: prefill.nodes + decode.nodes must not "
                          f"exceed the cluster's {sc.cluster.nodes}", file=sc.source.path, field="serving.disaggregation")
    bandwidth = routes.slowest_bandwidth(src, dst)
    latency = float(routes.pair_latency[src, dst])
    seconds = latency + prompt_tokens * per_token / (bandwidth * prefill_tp)
    return seconds, bandwidth, per_token


def simulate_disaggregated(sc: Scenario, progress=None) -> SimResult:
    """Run both pools and join their results (see the module docstring)."""
    from moesim.simulator.run import simulate

    split = sc.config.serving.disaggregation
    if split.prefill.nodes + split.decode.nodes > sc.cluster.nodes:
        raise ConfigError(f"prefill.nodes + decode.nodes = {split.prefill.nodes + split.decode.nodes} exceed the "
                          f"{sc.cluster.nodes} nodes of cluster '{sc.cluster.name}'", file=sc.source.path,
                          field="serving.disaggregation")
    requests = traffic_table(sc.config.serving, sc.seed, sc.source.base_dir)
    pre, dec = _pool(sc, "prefill"), _pool(sc, "decode")  # both checked before either is simulated
    pre.serving_requests = requests.assign(output_tokens=1)
    pre_result = simulate(pre, progress=progress)
    first = pre_result.requests.set_index("request_id")["finish_s"]  # the first token ends a 1-token request
    seconds, bandwidth, per_token = kv_transfer_seconds(sc, pre.tp, requests["prompt_tokens"].to_numpy())
    ready = requests["request_id"].map(first).to_numpy() + seconds
    more = requests["output_tokens"].to_numpy() > 1
    decode_requests = requests[more].assign(arrival_s=ready[more], transferred=True)
    dec.serving_requests = decode_requests.reset_index(drop=True)
    dec_result = simulate(dec, progress=progress)

    # join: first token from the prefill pool, the rest from the decode pool
    token_times: dict[int, list[float]] = {}
    for r in pre_result.requests.itertuples():
        if r.finished:
            token_times[int(r.request_id)] = [float(r.finish_s)]
    for r in dec_result.requests.itertuples():
        first_decode = float(r.arrival_s) + float(r.ttft_s) if np.isfinite(r.ttft_s) else None
        if first_decode is None:
            continue
        gaps = list(r.itl_s) if r.itl_s is not None else []
        times = [first_decode]
        for g in gaps:
            times.append(times[-1] + float(g))
        token_times.setdefault(int(r.request_id), []).extend(times)
    joined = requests.copy()
    pre_rows = pre_result.requests.set_index("request_id")
    joined["replica"] = joined["request_id"].map(pre_rows["replica"]).fillna(-1).astype("int64")
    joined["first_scheduled_s"] = joined["request_id"].map(pre_rows["first_scheduled_s"]).astype("float64")
    joined["preemptions"] = joined["request_id"].map(pre_rows["preemptions"]).fillna(0).astype("int64")
    joined["kv_transfer_s"] = seconds
    horizon = max(float(pre_result.summary["serving"]["horizon_s"]), float(dec_result.summary["serving"]["horizon_s"]))
    cfg = sc.config.serving
    table = request_table(joined, token_times, horizon, cfg.warmup)
    iterations = pd.concat([pre_result.iterations.assign(pool="prefill"), dec_result.iterations.assign(pool="decode")],
                           ignore_index=True)
    gpus = pre.num_devices + dec.num_devices
    summary = serving_summary(table, iterations, horizon, gpus, {"ttft_s": cfg.slo.ttft, "tpot_s": cfg.slo.tpot})
    summary["memory_per_rank_bytes"] = rank_memory(dec).as_dict()
    summary["replicas"] = pre_result.summary["serving"]["replicas"] + dec_result.summary["serving"]["replicas"]
    summary["iterations"] = len(iterations)
    summary["iteration_latency_s"] = None  # the pools iterate apart: each pool's under disaggregation
    summary["disaggregation"] = {
        "prefill": {"gpus": pre.num_devices, "ep": pre.ep, "tp": pre.tp, "dp": pre.dp,
                    "iterations": pre_result.summary["serving"]["iterations"],
                    "iteration_latency_s": pre_result.summary["serving"].get("iteration_latency_s"),
                    "memory_per_rank_bytes": rank_memory(pre).as_dict()},
        "decode": {"gpus": dec.num_devices, "ep": dec.ep, "tp": dec.tp, "dp": dec.dp,
                   "iterations": dec_result.summary["serving"]["iterations"],
                   "iteration_latency_s": dec_result.summary["serving"].get("iteration_latency_s")},
        "kv_transfer": {"bytes_per_token": per_token, "path_bandwidth_bytes_per_s": bandwidth,
                        "mean_s": float(np.mean(seconds)), "max_s": float(np.max(seconds)),
                        "model": "latency + prompt KV bytes / (bandwidth x prefill tp); transfers not queued"},
    }
    result = dec_result  # its timeline, phases and links are the decode pool's (the run directory's tables)
    result.requests, result.iterations = table, iterations
    result.summary["serving"] = summary
    return result
