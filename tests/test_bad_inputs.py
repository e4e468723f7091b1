"""Every bad input file and argument gets a clear error: exit status 2, a one-paragraph message
naming the file (or argument) and the field, and no traceback (issue 15).

Each case is one line of data: (id, files written into a fresh folder, `moesim` argv, words the
message must contain). A file's content is text, bytes, or a helper that builds bytes (Parquet,
npz). Argv entries naming one of the case's files become absolute paths; the command runs
in-process with the folder as the working directory. Adding a case is adding a line.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any, Callable, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from moesim import cli

TOY_DIR = Path(__file__).resolve().parent / "data" / "toy"


class Case(NamedTuple):
    id: str
    files: dict[str, str | bytes | Callable[[], bytes]]
    argv: list[str]
    words: list[str]


# --- building blocks: the toy scenario (2 devices, 4 experts, 1 MoE layer) and edits of it -------------

TOY = {p.name: p.read_text() for p in sorted(TOY_DIR.glob("*.yaml")) if p.name != "toy-scenario.yaml"}
TOY["scenario.yaml"] = (TOY_DIR / "toy-scenario.yaml").read_text()
DROP = object()  # value that deletes a key


def edit(text: str, changes: dict[str, Any]) -> str:
    """The YAML text with dotted keys set (or deleted with DROP)."""
    data = yaml.safe_load(text)
    for dotted, value in changes.items():
        *parents, last = dotted.split(".")
        node = data
        for key in parents:
            node = node.setdefault(key, {})
        if value is DROP:
            node.pop(last, None)
        else:
            node[last] = value
    return yaml.safe_dump(data, sort_keys=False)


def toy(name: str = "scenario.yaml", changes: dict[str, Any] | None = None, text: str | None = None,
        **extra: Any) -> dict[str, Any]:
    """The toy files with one of them edited (dotted changes) or replaced (text); extra files by
    keyword, with '_' for '.' in the name (p_yaml -> p.yaml)."""
    files = dict(TOY)
    files[name] = text if text is not None else edit(TOY[name], changes or {})
    files.update({k.replace("_", "."): v for k, v in extra.items()})
    return files


def sub(name: str, old: str, new: str, **extra: Any) -> dict[str, Any]:
    """The toy files with a text substitution in one of them (typos, duplicate keys)."""
    assert old in TOY[name], old
    return toy(name, text=TOY[name].replace(old, new, 1), **extra)


def sc(changes: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return toy("scenario.yaml", changes, **extra)


def dev(changes: dict[str, Any]) -> dict[str, Any]:
    return toy("toy-device.yaml", changes)


def link(changes: dict[str, Any]) -> dict[str, Any]:
    return toy("toy-link.yaml", changes)


def clu(changes: dict[str, Any]) -> dict[str, Any]:
    return toy("toy-cluster.yaml", changes)


SIM = ["simulate", "scenario.yaml", "--out", "out", "--quiet"]
ROOF = ["roofline", "--model", "toy-model.yaml", "--device", "toy-device.yaml", "--out", "out"]
ROOF_SC = ["roofline", "scenario.yaml", "--out", "out"]

# --- Hugging Face config.json: a tiny Mixtral-style model ------------------------------------------------

HF_BASE = {"model_type": "mixtral", "hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 4,
           "num_hidden_layers": 2, "num_local_experts": 4, "num_experts_per_tok": 2, "intermediate_size": 128,
           "vocab_size": 100, "torch_dtype": "bfloat16"}


def hf(**changes: Any) -> dict[str, Any]:
    cfg = {k: v for k, v in {**HF_BASE, **changes}.items() if v is not DROP}
    return {"config.json": json.dumps(cfg)}


HF = ["trace", "stats", "t.parquet", "--model", "config.json"]  # the model is loaded before the trace

# --- traces for Toy-MoE8 (2 MoE layers, 8 experts, top-2) ------------------------------------------------

TRACE_COLS = {"step": [0, 0, 0, 0], "token": [0, 1, 0, 1], "source": [0, 1, 0, 1], "moe_layer": [0, 0, 1, 1],
              "expert_0": [0, 1, 2, 3], "expert_1": [4, 5, 6, 7]}


def parquet(**changes: Any) -> Callable[[], bytes]:
    """A Parquet trace (no moesim metadata) with columns replaced or dropped."""
    def build() -> bytes:
        cols = {k: v for k, v in {**TRACE_COLS, **changes}.items() if v is not DROP}
        buf = io.BytesIO()
        pq.write_table(pa.table(cols), buf)
        return buf.getvalue()
    return build


def npz(**arrays: Any) -> Callable[[], bytes]:
    def build() -> bytes:
        buf = io.BytesIO()
        np.savez(buf, **{k: np.asarray(v) for k, v in arrays.items()})
        return buf.getvalue()
    return build


def jsonl(*lines: Any) -> str:
    return "\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines) + "\n"


IDS = [[0, 4], [2, 6]]  # one token's top-2 experts at the two MoE layers
TOPK = [[[0, 4], [1, 5]], [[2, 6], [3, 7]]]  # topk_ids (layers=2, tokens=2, k=2)


def stats(name: str, *more: str) -> list[str]:
    return ["trace", "stats", name, "--model", "toy-moe8.yaml", "--devices", "2", *more]


# --- placement files, requests, measured points, generators ---------------------------------------------

def placed(text: str) -> dict[str, Any]:
    return sc({"placement": {"file": "p.yaml"}}, p_yaml=text)


REQ = {"arrivals": {"process": "poisson", "rate": 10}, "num_requests": 5,
       "prompt_tokens": {"dist": "fixed", "value": 100}, "output_tokens": {"dist": "uniform", "low": 1, "high": 8}}


def req(changes: dict[str, Any] | None = None, text: str | None = None, **extra: Any) -> dict[str, Any]:
    files = {"r.yaml": text if text is not None else edit(yaml.safe_dump({"requests": REQ}), changes or {})}
    files.update({k.replace("_", "."): v for k, v in extra.items()})
    return files


REQS = ["requests", "r.yaml"]
MEASURED_OK = "device,op,flops,bytes,time_s\nToy-GPU,gemm,1e9,1e6,1e-5\n"
MEAS = ROOF + ["--measured", "m.csv"]


def measured(text: str | bytes) -> dict[str, Any]:
    return {**TOY, "m.csv": text}


CAL = {"kinds": {"gemm": {"compute_max": 0.8, "rows_half": 16, "memory_max": 0.9, "bytes_half": 1e6,
                          "overhead": 1e-6}}, "measurements": "m.csv"}


def calibrated(changes: dict[str, Any], table: str | bytes = MEASURED_OK) -> dict[str, Any]:
    text = edit(edit(TOY["toy-device.yaml"], {"calibration": CAL}), changes)
    return {**toy("toy-device.yaml", text=text), "m.csv": table}


GEN = {"popularity": {"kind": "zipf", "alpha": 1.0}, "affinity": 0.5}
SYNTH = ["trace", "synth", "g.yaml", "--model", "toy-moe8.yaml", "--out", "t.parquet", "--steps", "1",
         "--tokens", "4", "--sources", "2"]


def gen(changes: dict[str, Any] | None = None, text: str | None = None) -> dict[str, Any]:
    return {**TOY, "g.yaml": text if text is not None else edit(yaml.safe_dump({"synthetic": GEN}), changes or {})}


# === the cases ============================================================================================

CONFIG_CASES = [
    Case("cfg-malformed-yaml", sub("scenario.yaml", "hardware: {cluster: toy-cluster.yaml}",
                                   "hardware: {cluster: toy-cluster.yaml"), SIM, ["scenario.yaml", "malformed YAML", "line"]),
    Case("cfg-duplicate-top-key", toy(text=TOY["scenario.yaml"] + "seed: 3\n"), SIM,
         ["scenario.yaml", "duplicate key 'seed'", "line 16", "line 15"]),
    Case("cfg-duplicate-nested-key", sub("scenario.yaml", "  phase: decode\n", "  phase: decode\n  phase: prefill\n"),
         SIM, ["scenario.yaml", "duplicate key 'phase'", "line 8"]),
    Case("cfg-top-level-list", toy(text="- model\n- hardware\n"), SIM, ["scenario.yaml", "mapping", "list"]),
    Case("cfg-empty-file", toy(text=""), SIM, ["scenario.yaml", "model", "missing"]),
    Case("cfg-binary-file", toy(text=b"\x89PNG\r\n\x1a\n\x00\xff\xfe"), SIM, ["scenario.yaml", "not a text file"]),
    Case("cfg-file-missing", {}, SIM, ["scenario.yaml", "not found"]),
    Case("cfg-is-directory", {"scenario.yaml/x.txt": "x"}, SIM, ["scenario.yaml", "directory"]),
    Case("cfg-typo-hardware", sub("scenario.yaml", "hardware:", "hardwre:"), SIM,
         ["scenario.yaml", "hardwre", "did you mean 'hardware'"]),
    Case("cfg-typo-batch-size", sub("scenario.yaml", "batch_size:", "batchsize:"), SIM,
         ["scenario.yaml", "workload.batchsize", "did you mean 'batch_size'"]),
    Case("cfg-typo-generator", sub("scenario.yaml", "generator:", "generater:"), SIM,
         ["scenario.yaml", "workload.routing.generater", "did you mean 'generator'"]),
    Case("cfg-typo-dispatch-algorithm", sc({"policies": {"dispatch": {"algoritm": "dedup"}}}), SIM,
         ["scenario.yaml", "policies.dispatch.algoritm", "did you mean 'algorithm'"]),
    Case("cfg-typo-scale-flops", sc({"hardware.scale": {"flop": 2}}), SIM,
         ["scenario.yaml", "hardware.scale.flop", "did you mean 'flops'"]),
    Case("cfg-unknown-key", sc({"colour": "blue"}), SIM, ["scenario.yaml", "unknown key 'colour'", "valid keys"]),
    Case("cfg-batch-size-string", sc({"workload.batch_size": "four"}), SIM,
         ["scenario.yaml", "workload.batch_size", "integer"]),
    Case("cfg-batch-size-zero", sc({"workload.batch_size": 0}), SIM, ["scenario.yaml", "workload.batch_size", "1"]),
    Case("cfg-batch-size-negative", sc({"workload.batch_size": -4}), SIM, ["scenario.yaml", "workload.batch_size"]),
    Case("cfg-batch-size-float", sc({"workload.batch_size": 2.5}), SIM, ["scenario.yaml", "workload.batch_size"]),
    Case("cfg-kv-len-negative", sc({"workload.kv_len": -1}), SIM, ["scenario.yaml", "workload.kv_len"]),
    Case("cfg-steps-zero", sc({"workload.steps": 0}), SIM, ["scenario.yaml", "workload.steps"]),
    Case("cfg-phase-unknown", sc({"workload.phase": "train"}), SIM, ["scenario.yaml", "workload.phase", "decode"]),
    Case("cfg-decode-without-kv-len", sc({"workload.kv_len": DROP}), SIM, ["scenario.yaml", "kv_len"]),
    Case("cfg-batch-and-tokens", sc({"workload.tokens_per_device": 8}), SIM, ["scenario.yaml", "exactly one"]),
    Case("cfg-scale-flops-negative", sc({"hardware.scale": {"flops": -2}}), SIM,
         ["scenario.yaml", "hardware.scale.flops", "greater than 0"]),
    Case("cfg-scale-flops-nan", sc({"hardware.scale": {"flops": float("nan")}}), SIM,
         ["scenario.yaml", "hardware.scale.flops", "finite"]),
    Case("cfg-scale-link-inf", sc({"hardware.scale": {"link_bandwidth": float("inf")}}), SIM,
         ["scenario.yaml", "hardware.scale.link_bandwidth", "finite"]),
    Case("cfg-memory-reserve-above-1", sc({"policies": {"memory_reserve": 1.5}}), SIM,
         ["scenario.yaml", "policies.memory_reserve"]),
    Case("cfg-capacity-factor-zero", sc({"policies": {"capacity_factor": 0}}), SIM,
         ["scenario.yaml", "policies.capacity_factor"]),
    Case("cfg-kernel-latency-negative", sc({"policies": {"dispatch": {"kernel_latency": "-3 us"}}}), SIM,
         ["scenario.yaml", "policies.dispatch.kernel_latency"]),
    Case("cfg-kernel-latency-bad-unit", sc({"policies": {"dispatch": {"kernel_latency": "3 parsecs"}}}), SIM,
         ["scenario.yaml", "policies.dispatch.kernel_latency", "time"]),
    Case("cfg-zipf-alpha-nan", sc({"workload.routing": {"generator": "zipf", "alpha": float("nan")}}), SIM,
         ["scenario.yaml", "workload.routing.alpha", "finite"]),
    Case("cfg-counts-nan", sc({"workload.routing.counts": [[3, 0, 1, float("nan")], [1, 0, 1, 2]]}), SIM,
         ["scenario.yaml", "workload.routing.counts", "finite"]),
    Case("cfg-counts-wrong-shape", sc({"workload.routing.counts": [[3, 0, 1], [1, 0, 1]]}), SIM,
         ["scenario.yaml", "workload.routing.counts"]),
    Case("cfg-counts-negative", sc({"workload.routing.counts": [[3, 0, 1, -1], [1, 0, 1, 2]]}), SIM,
         ["scenario.yaml", "workload.routing.counts", "non-negative"]),
    Case("cfg-trace-generator-without-trace", sc({"workload.routing": {"generator": "trace"}}), SIM,
         ["scenario.yaml", "routing.trace"]),
    Case("cfg-trace-file-missing", sc({"workload.routing": {"generator": "trace", "trace": "missing.parquet"}}), SIM,
         ["missing.parquet", "not found"]),
    Case("cfg-synthetic-file-missing", sc({"workload.routing": {"generator": "synthetic", "synthetic": "g.yaml"}}),
         SIM, ["scenario.yaml", "workload.routing.synthetic", "not found"]),
    Case("cfg-outputs-trace-steps-negative", sc({"outputs": {"trace_steps": -1}}), SIM,
         ["scenario.yaml", "outputs.trace_steps"]),
    Case("cfg-seed-negative", sc({"seed": -1}), SIM, ["scenario.yaml", "seed"]),
    Case("cfg-model-unknown", sc({"model": "Toy-MoE9"}), SIM, ["scenario.yaml", "'model'", "unknown model 'Toy-MoE9'"]),
    Case("cfg-model-suggestion", sc({"model": "mixtral"}), SIM, ["scenario.yaml", "did you mean 'Mixtral-8x7B'"]),
    Case("cfg-model-file-missing", sc({"model": "nomodel.yaml"}), SIM, ["nomodel.yaml", "not found"]),
    Case("cfg-cluster-suggestion", sc({"hardware.cluster": "h100"}), SIM,
         ["scenario.yaml", "hardware.cluster", "did you mean 'dgx-h100'"]),
    Case("cfg-cluster-file-missing", sc({"hardware.cluster": "nocluster.yaml"}), SIM,
         ["scenario.yaml", "hardware.cluster", "nocluster.yaml", "not found"]),
    Case("cfg-cluster-missing", sc({"hardware.cluster": DROP}), SIM, ["scenario.yaml", "hardware.cluster", "missing"]),
    Case("cfg-ep-does-not-divide", sc({"parallelism": {"ep": 3, "tp": 1, "dp": 2}}), SIM,
         ["scenario.yaml", "parallelism"]),
    Case("cfg-tp-dp-mismatch", sc({"parallelism": {"ep": 2, "tp": 2, "dp": 2}}), SIM,
         ["scenario.yaml", "parallelism", "must equal"]),
    Case("cfg-ep-zero", sc({"parallelism.ep": 0}), SIM, ["scenario.yaml", "parallelism.ep"]),
    Case("cfg-placement-policy-and-file", sc({"placement": {"policy": "contiguous", "file": "p.yaml"}}), SIM,
         ["scenario.yaml", "placement", "either"]),
    Case("cfg-placement-policy-unknown", sc({"placement": {"policy": "striped"}}), SIM,
         ["scenario.yaml", "placement.policy", "round_robin"]),
    Case("cfg-placement-file-missing", sc({"placement": {"file": "p.yaml"}}), SIM,
         ["scenario.yaml", "placement.file", "not found"]),
    Case("cfg-too-big-for-memory", sc({"workload.kv_len": 10**12}), SIM,
         ["scenario.yaml", "workload", "does not fit in memory"]),
]

DEVICE_CASES = [
    Case("dev-bf16-negative", dev({"compute.bf16": "-5 TFLOPS"}), SIM, ["toy-device.yaml", "compute.bf16", "greater than 0"]),
    Case("dev-bf16-zero", dev({"compute.bf16": 0}), SIM, ["toy-device.yaml", "compute.bf16", "greater than 0"]),
    Case("dev-bf16-nan", dev({"compute.bf16": float("nan")}), SIM, ["toy-device.yaml", "compute.bf16", "finite"]),
    Case("dev-bf16-inf", dev({"compute.bf16": float("inf")}), SIM, ["toy-device.yaml", "compute.bf16", "finite"]),
    Case("dev-bf16-overflow", dev({"compute.bf16": "1e999 TFLOPS"}), SIM, ["toy-device.yaml", "compute.bf16", "finite"]),
    Case("dev-bf16-words", dev({"compute.bf16": "fast"}), SIM, ["toy-device.yaml", "compute.bf16", "compute rate"]),
    Case("dev-compute-empty", dev({"compute": {}}), SIM, ["toy-device.yaml", "compute", "bf16"]),
    Case("dev-compute-dtype-typo", dev({"compute": {"bf61": "100 TFLOPS"}}), SIM,
         ["toy-device.yaml", "compute", "did you mean 'bf16'"]),
    Case("dev-capacity-negative", dev({"memory.capacity": "-80 GB"}), SIM, ["toy-device.yaml", "memory.capacity"]),
    Case("dev-capacity-zero", dev({"memory.capacity": 0}), SIM, ["toy-device.yaml", "memory.capacity"]),
    Case("dev-bandwidth-nan", dev({"memory.bandwidth": float("nan")}), SIM, ["toy-device.yaml", "memory.bandwidth", "finite"]),
    Case("dev-bandwidth-not-a-rate", dev({"memory.bandwidth": "1 TB"}), SIM,
         ["toy-device.yaml", "memory.bandwidth", "bandwidth"]),
    Case("dev-efficiency-above-1", dev({"efficiency.compute": 1.5}), SIM, ["toy-device.yaml", "efficiency.compute"]),
    Case("dev-efficiency-zero", dev({"efficiency.memory": 0}), SIM, ["toy-device.yaml", "efficiency.memory"]),
    Case("dev-overhead-negative", dev({"overhead": "-1 us"}), SIM, ["toy-device.yaml", "overhead"]),
    Case("dev-gemm-tile-zero", dev({"gemm_tile": 0}), SIM, ["toy-device.yaml", "gemm_tile"]),
    Case("dev-kind-unknown", dev({"kind": "tpu"}), SIM, ["toy-device.yaml", "kind", "gpu"]),
    Case("dev-memory-missing", dev({"memory": DROP}), SIM, ["toy-device.yaml", "memory", "missing"]),
    Case("dev-typo-memory", sub("toy-device.yaml", "memory:", "memroy:"), SIM,
         ["toy-device.yaml", "memroy", "did you mean 'memory'"]),
    Case("dev-duplicate-key", sub("toy-device.yaml", "kind: gpu\n", "kind: gpu\nkind: cpu\n"), SIM,
         ["toy-device.yaml", "duplicate key 'kind'"]),
    Case("dev-roofline-name-suggestion", TOY, ["roofline", "--model", "toy-model.yaml", "--device", "h100"],
         ["--device", "did you mean 'H100-SXM'"]),
    Case("dev-roofline-file-missing", TOY, ["roofline", "--model", "toy-model.yaml", "--device", "nodevice.yaml"],
         ["--device", "nodevice.yaml", "not found"]),
]

LINK_CASES = [
    Case("link-bandwidth-zero", link({"bandwidth": 0}), SIM, ["toy-link.yaml", "bandwidth", "greater than 0"]),
    Case("link-bandwidth-negative", link({"bandwidth": "-100 GB/s"}), SIM, ["toy-link.yaml", "bandwidth"]),
    Case("link-bandwidth-nan", link({"bandwidth": float("nan")}), SIM, ["toy-link.yaml", "bandwidth", "finite"]),
    Case("link-bandwidth-no-per-second", link({"bandwidth": "100 GB"}), SIM, ["toy-link.yaml", "bandwidth"]),
    Case("link-latency-negative", link({"latency": "-1 us"}), SIM, ["toy-link.yaml", "latency"]),
    Case("link-latency-inf", link({"latency": float("inf")}), SIM, ["toy-link.yaml", "latency", "finite"]),
    Case("link-efficiency-above-1", link({"efficiency": 2}), SIM, ["toy-link.yaml", "efficiency"]),
    Case("link-kind-unknown", link({"kind": "carrier-pigeon"}), SIM, ["toy-link.yaml", "kind", "nvlink"]),
    Case("link-bandwidth-missing", link({"bandwidth": DROP}), SIM, ["toy-link.yaml", "bandwidth", "missing"]),
    Case("link-typo-latency", sub("toy-link.yaml", "latency:", "latncy:"), SIM,
         ["toy-link.yaml", "latncy", "did you mean 'latency'"]),
]

CLUSTER_CASES = [
    Case("clu-topology-none", clu({"node.intra_node.topology": "none"}), SIM,
         ["toy-cluster.yaml", "node", "topology 'none'"]),
    Case("clu-topology-unknown", clu({"node.intra_node.topology": "ring"}), SIM,
         ["toy-cluster.yaml", "node.intra_node.topology", "full_mesh"]),
    Case("clu-devices-per-node-zero", clu({"node.devices_per_node": 0}), SIM, ["toy-cluster.yaml", "node.devices_per_node"]),
    Case("clu-nodes-zero", clu({"nodes": 0}), SIM, ["toy-cluster.yaml", "nodes"]),
    Case("clu-multi-node-without-nic", clu({"nodes": 2}), SIM, ["toy-cluster.yaml", "node.nic"]),
    Case("clu-device-suggestion", clu({"node.device": "h100"}), SIM,
         ["toy-cluster.yaml", "node.device", "did you mean 'H100-SXM'"]),
    Case("clu-link-unknown", clu({"node.intra_node.link": "nvlink9"}), SIM,
         ["toy-cluster.yaml", "node.intra_node.link", "unknown link"]),
    Case("clu-link-file-missing", clu({"node.intra_node.link": "nolink.yaml"}), SIM,
         ["toy-cluster.yaml", "node.intra_node.link", "nolink.yaml", "not found"]),
    Case("clu-host-count-zero", clu({"node.host": {"device": "Xeon-8480", "count": 0, "link": "PCIe5-x16"}}), SIM,
         ["toy-cluster.yaml", "node.host.count"]),
    Case("clu-storage-capacity-negative", clu({"node.storage": {"link": "NVMe-Gen4-x4", "capacity": "-1 TB"}}), SIM,
         ["toy-cluster.yaml", "node.storage.capacity"]),
    Case("clu-nic-devices-zero", clu({"nodes": 2, "node.nic": {"link": "toy-nic.yaml", "devices_per_nic": 0,
                                                                "attach": "toy-link.yaml"}}), SIM,
         ["toy-cluster.yaml", "node.nic.devices_per_nic"]),
    Case("clu-network-unknown", clu({"network": "mesh"}), SIM, ["toy-cluster.yaml", "network", "switch"]),
    Case("clu-node-missing", clu({"node": DROP}), SIM, ["toy-cluster.yaml", "node", "missing"]),
    Case("clu-typo-nodes", sub("toy-cluster.yaml", "nodes:", "nodse:"), SIM,
         ["toy-cluster.yaml", "nodse", "did you mean", "'nodes'"]),
    Case("clu-device-profile-bad", toy("toy-device.yaml", {"memory.bandwidth": "-1 TB/s"}), SIM,
         ["toy-device.yaml", "memory.bandwidth"]),
]

HF_CASES = [
    Case("hf-experts-string", hf(num_local_experts="eight"), HF, ["config.json", "num_local_experts", "whole number"]),
    Case("hf-experts-zero", hf(num_local_experts=0), HF, ["config.json", "num_local_experts"]),
    Case("hf-experts-negative", hf(num_local_experts=-8), HF, ["config.json", "num_local_experts"]),
    Case("hf-experts-bool", hf(num_local_experts=True), HF, ["config.json", "num_local_experts"]),
    Case("hf-heads-zero", hf(num_attention_heads=0), HF, ["config.json", "num_attention_heads"]),
    Case("hf-hidden-string", hf(hidden_size="64"), HF, ["config.json", "hidden_size"]),
    Case("hf-hidden-fraction", hf(hidden_size=64.5), HF, ["config.json", "hidden_size"]),
    Case("hf-layers-missing", hf(num_hidden_layers=DROP), HF, ["config.json", "num_hidden_layers", "missing"]),
    Case("hf-top-k-missing", hf(num_experts_per_tok=DROP), HF, ["config.json", "num_experts_per_tok", "missing"]),
    Case("hf-top-k-too-large", hf(num_experts_per_tok=9), HF, ["config.json", "num_experts_per_tok", "num_local_experts"]),
    Case("hf-kv-heads-do-not-divide", hf(num_key_value_heads=3), HF, ["config.json", "num_key_value_heads"]),
    Case("hf-intermediate-nan", {"config.json": json.dumps({**HF_BASE, "intermediate_size": float("nan")})}, HF,
         ["config.json", "intermediate_size"]),
    Case("hf-text-config-not-object", hf(text_config=[1, 2]), HF, ["config.json", "text_config"]),
    Case("hf-not-json", {"config.json": "{not json"}, HF, ["config.json", "malformed JSON"]),
    Case("hf-empty-file", {"config.json": ""}, HF, ["config.json", "malformed JSON"]),
    Case("hf-json-list", {"config.json": "[1, 2]"}, HF, ["config.json", "JSON object"]),
    Case("hf-binary", {"config.json": b"\xff\xfe\x00garbage"}, HF, ["config.json"]),
    Case("hf-file-missing", {}, HF, ["config.json", "not found"]),
    Case("hf-in-scenario", {**sc({"model": "config.json"}), **hf(num_local_experts=0)}, SIM,
         ["config.json", "num_local_experts", "scenario.yaml"]),
]

TRACE_CASES = [
    Case("trace-parquet-corrupt", {**TOY, "t.parquet": b"PAR1 this is not parquet PAR1"}, stats("t.parquet"),
         ["t.parquet", "Parquet"]),
    Case("trace-parquet-missing-column", {**TOY, "t.parquet": parquet(expert_0=DROP)}, stats("t.parquet"),
         ["t.parquet", "expert_0"]),
    Case("trace-parquet-expert-out-of-range", {**TOY, "t.parquet": parquet(expert_1=[4, 5, 6, 9])}, stats("t.parquet"),
         ["t.parquet", "expert id out of range", "row 3"]),
    Case("trace-parquet-expert-negative", {**TOY, "t.parquet": parquet(expert_0=[0, -1, 2, 3])}, stats("t.parquet"),
         ["t.parquet", "expert id out of range", "row 1"]),
    Case("trace-parquet-wrong-top-k", {**TOY, "t.parquet": parquet(expert_1=DROP)}, stats("t.parquet"),
         ["t.parquet", "expert_", "top-2"]),
    Case("trace-parquet-layer-out-of-range", {**TOY, "t.parquet": parquet(moe_layer=[0, 0, 1, 2])}, stats("t.parquet"),
         ["t.parquet", "moe_layer"]),
    Case("trace-parquet-unsorted", {**TOY, "t.parquet": parquet(step=[1, 1, 0, 0])}, stats("t.parquet"),
         ["t.parquet", "sorted"]),
    Case("trace-parquet-same-expert-twice", {**TOY, "t.parquet": parquet(expert_1=[0, 5, 6, 7])}, stats("t.parquet"),
         ["t.parquet", "twice", "row 0"]),
    Case("trace-parquet-duplicate-token", {**TOY, "t.parquet": parquet(token=[0, 0, 0, 1])}, stats("t.parquet"),
         ["t.parquet", "token 0"]),
    Case("trace-parquet-weight-nan", {**TOY, "t.parquet": parquet(weight_0=[0.5, float("nan"), 0.5, 0.5],
                                                                  weight_1=[0.5] * 4)}, stats("t.parquet"),
         ["t.parquet", "gate weight", "row 1"]),
    Case("trace-parquet-string-column", {**TOY, "t.parquet": parquet(step=["a", "a", "a", "a"])}, stats("t.parquet"),
         ["t.parquet", "step", "integer"]),
    Case("trace-parquet-float-experts", {**TOY, "t.parquet": parquet(expert_0=[0.5, 1.0, 2.0, 3.0])}, stats("t.parquet"),
         ["t.parquet", "expert_0", "integer"]),
    Case("trace-parquet-empty", {**TOY, "t.parquet": parquet(**{k: np.zeros(0, np.int64) for k in TRACE_COLS})}, stats("t.parquet"),
         ["t.parquet", "no rows"]),
    Case("trace-file-missing", TOY, stats("t.parquet"), ["t.parquet", "not found"]),
    Case("trace-unknown-format", {**TOY, "t.csv": "step,token\n0,0\n"}, stats("t.csv"), ["t.csv", "unknown trace format"]),
    Case("trace-npz-wrong-arrays", {**TOY, "t.npz": npz(foo=[1, 2])}, stats("t.npz"), ["t.npz", "found keys", "foo"]),
    Case("trace-npz-topk-2d", {**TOY, "t.npz": npz(topk_ids=[[0, 4], [1, 5]])}, stats("t.npz"), ["t.npz", "topk_ids"]),
    Case("trace-npz-topk-float", {**TOY, "t.npz": npz(topk_ids=np.asarray(TOPK) + 0.5)}, stats("t.npz"),
         ["t.npz", "topk_ids", "integer"]),
    Case("trace-npz-topk-out-of-range", {**TOY, "t.npz": npz(topk_ids=[[[0, 4], [1, 5]], [[2, 6], [3, 8]]])},
         stats("t.npz"), ["t.npz", "expert id out of range"]),
    Case("trace-npz-weights-shape", {**TOY, "t.npz": npz(topk_ids=TOPK, topk_weights=[[0.5, 0.5]])}, stats("t.npz"),
         ["t.npz", "topk_weights"]),
    Case("trace-npz-wrong-top-k", {**TOY, "t.npz": npz(topk_ids=[[[0], [1]], [[2], [3]]])}, stats("t.npz"),
         ["t.npz", "top_k"]),
    Case("trace-npz-logits-without-model", {**TOY, "t.npz": npz(router_logits=np.zeros((2, 2, 8)))},
         ["trace", "stats", "t.npz"], ["t.npz", "--model"]),
    Case("trace-npz-logits-wrong-experts", {**TOY, "t.npz": npz(router_logits=np.zeros((2, 2, 6)))}, stats("t.npz"),
         ["t.npz", "router_logits", "8"]),
    Case("trace-npz-logits-nan", {**TOY, "t.npz": npz(router_logits=np.full((2, 2, 8), np.nan))}, stats("t.npz"),
         ["t.npz", "router_logits", "finite"]),
    Case("trace-npz-source-shape", {**TOY, "t.npz": npz(topk_ids=TOPK, source=[0, 1, 2])}, stats("t.npz"),
         ["t.npz", "source"]),
    Case("trace-npz-corrupt", {**TOY, "t.npz": b"PK\x03\x04 not a zip"}, stats("t.npz"), ["t.npz", "could not read"]),
    Case("trace-npz-long-missing-column", {**TOY, "t.npz": npz(experts=[[0, 4]], step=[0], token=[0], source=[0])},
         stats("t.npz"), ["t.npz", "moe_layer"]),
    Case("trace-jsonl-bad-json", {**TOY, "t.jsonl": jsonl({"experts": IDS}, "{oops")}, stats("t.jsonl"),
         ["t.jsonl", "line 2", "JSON"]),
    Case("trace-jsonl-no-experts", {**TOY, "t.jsonl": jsonl({"experts": IDS}, {"token": 1})}, stats("t.jsonl"),
         ["t.jsonl", "line 2", "experts"]),
    Case("trace-jsonl-experts-flat", {**TOY, "t.jsonl": jsonl({"experts": [0, 4]})}, stats("t.jsonl"),
         ["t.jsonl", "line 1", "experts"]),
    Case("trace-jsonl-ragged-top-k", {**TOY, "t.jsonl": jsonl({"experts": IDS}, {"experts": [[0, 4, 5], [1, 2]]})},
         stats("t.jsonl"), ["t.jsonl", "top-k"]),
    Case("trace-jsonl-expert-out-of-range", {**TOY, "t.jsonl": jsonl({"experts": [[0, 4], [2, 11]]})},
         stats("t.jsonl"), ["t.jsonl", "expert id out of range"]),
    Case("trace-jsonl-step-not-a-number", {**TOY, "t.jsonl": jsonl({"step": "first", "experts": IDS})},
         stats("t.jsonl"), ["t.jsonl", "line 1", "step"]),
    Case("trace-jsonl-expert-id-string", {**TOY, "t.jsonl": jsonl({"experts": [["a", "b"], [2, 6]]})},
         stats("t.jsonl"), ["t.jsonl", "line 1", "experts"]),
    Case("trace-jsonl-weights-some-lines", {**TOY, "t.jsonl": jsonl({"experts": IDS, "weights": [[0.5, 0.5]] * 2},
                                                                    {"experts": IDS, "token": 1})},
         stats("t.jsonl"), ["t.jsonl", "weights"]),
    Case("trace-jsonl-empty", {**TOY, "t.jsonl": "\n"}, stats("t.jsonl"), ["t.jsonl", "no rows"]),
    Case("trace-jsonl-line-not-object", {**TOY, "t.jsonl": jsonl([1, 2, 3])}, stats("t.jsonl"), ["t.jsonl", "line 1"]),
    Case("trace-scenario-model-mismatch", {**sc({"workload": {"phase": "decode", "kv_len": 9, "routing": {
        "generator": "trace", "trace": "t.parquet"}}}), "t.parquet": parquet()}, SIM,
         ["t.parquet", "scenario.yaml"]),
    Case("trace-convert-bad-jsonl", {**TOY, "t.jsonl": jsonl("{oops")}, ["trace", "convert", "t.jsonl", "out.parquet"],
         ["t.jsonl", "line 1"]),
    Case("trace-fit-corrupt", {**TOY, "t.parquet": b"garbage"}, ["trace", "fit", "t.parquet"], ["t.parquet", "Parquet"]),
]

PLACEMENT_CASES = [
    Case("place-device-out-of-range", placed("experts: [0, 1, 0, 5]\n"), SIM, ["p.yaml", "experts[3]", "[0, 2)"]),
    Case("place-device-negative", placed("experts: [0, -1, 0, 1]\n"), SIM, ["p.yaml", "experts[1]"]),
    Case("place-too-few-experts", placed("experts: [0, 1]\n"), SIM, ["p.yaml", "experts", "one entry per expert (4)"]),
    Case("place-wrong-layer-count", placed("layers: [[0, 0, 1, 1], [0, 0, 1, 1]]\n"), SIM, ["p.yaml", "layers", "1 MoE"]),
    Case("place-no-layers-or-experts", placed("num_devices: 2\n"), SIM, ["p.yaml", "'layers'", "'experts'"]),
    Case("place-typo-experts", placed("expertz: [0, 0, 1, 1]\n"), SIM, ["p.yaml", "expertz", "did you mean 'experts'"]),
    Case("place-num-devices-mismatch", placed("num_devices: 4\nexperts: [0, 0, 1, 1]\n"), SIM, ["p.yaml", "num_devices"]),
    Case("place-num-devices-string", placed("num_devices: two\nexperts: [0, 0, 1, 1]\n"), SIM,
         ["p.yaml", "num_devices", "integer"]),
    Case("place-num-experts-mismatch", placed("num_experts: 8\nexperts: [0, 0, 1, 1]\n"), SIM, ["p.yaml", "num_experts"]),
    Case("place-replica-twice", placed("experts: [[0, 0], 0, 1, 1]\n"), SIM, ["p.yaml", "experts[0]", "twice"]),
    Case("place-empty-replica-list", placed("experts: [[], 0, 1, 1]\n"), SIM, ["p.yaml", "experts[0]"]),
    Case("place-device-string", placed("experts: ['0', 0, 1, 1]\n"), SIM, ["p.yaml", "experts[0]"]),
    Case("place-device-bool", placed("experts: [true, 0, 1, 1]\n"), SIM, ["p.yaml", "experts[0]"]),
    Case("place-shares-do-not-sum", placed("experts: [[0, 1], 0, 1, 1]\nshares: [[0.5, 0.6], 1, 1, 1]\n"), SIM,
         ["p.yaml", "shares[0][0]", "sum"]),
    Case("place-shares-negative", placed("experts: [[0, 1], 0, 1, 1]\nshares: [[1.5, -0.5], 1, 1, 1]\n"), SIM,
         ["p.yaml", "shares[0][0]", "non-negative"]),
    Case("place-shares-nan", placed("experts: [[0, 1], 0, 1, 1]\nshares: [[.nan, 0.5], 1, 1, 1]\n"), SIM,
         ["p.yaml", "shares", "finite"]),
    Case("place-malformed-yaml", placed("experts: [0, 0, 1, 1\n"), SIM, ["p.yaml", "malformed YAML"]),
    Case("place-duplicate-key", placed("experts: [0, 0, 1, 1]\nexperts: [0, 1, 0, 1]\n"), SIM,
         ["p.yaml", "duplicate key 'experts'"]),
]

REQUEST_CASES = [
    Case("req-rate-negative", req({"requests.arrivals.rate": -1}), REQS, ["r.yaml", "requests.arrivals", "rate"]),
    Case("req-rate-nan", req({"requests.arrivals.rate": float("nan")}), REQS, ["r.yaml", "rate", "finite"]),
    Case("req-process-unknown", req({"requests.arrivals.process": "weibull"}), REQS,
         ["r.yaml", "requests.arrivals", "poisson"]),
    Case("req-unbounded", req({"requests.num_requests": DROP}), REQS, ["r.yaml", "num_requests", "duration"]),
    Case("req-uniform-low-above-high", req({"requests.output_tokens.low": 9}), REQS,
         ["r.yaml", "requests.output_tokens", "low <= high"]),
    Case("req-duration-negative", req({"requests.duration": "-5 s"}), REQS, ["r.yaml", "duration"]),
    Case("req-num-requests-zero", req({"requests.num_requests": 0}), REQS, ["r.yaml", "requests.num_requests"]),
    Case("req-fixed-length-zero", req({"requests.prompt_tokens.value": 0}), REQS,
         ["r.yaml", "requests.prompt_tokens", "value"]),
    Case("req-lognormal-mean-zero", req({"requests.prompt_tokens": {"dist": "lognormal", "mean": 0, "std": 1}}), REQS,
         ["r.yaml", "requests.prompt_tokens", "mean"]),
    Case("req-gamma-cv-zero", req({"requests.arrivals": {"process": "gamma", "rate": 1, "cv": 0}}), REQS,
         ["r.yaml", "requests.arrivals", "cv"]),
    Case("req-typo-arrivals", req(text=yaml.safe_dump({"requests": {**REQ, "arrivls": REQ["arrivals"]}})), REQS,
         ["r.yaml", "arrivls", "did you mean 'arrivals'"]),
    Case("req-duplicate-key", req(text="requests:\n  num_requests: 5\n  num_requests: 6\n"), REQS,
         ["r.yaml", "duplicate key 'num_requests'"]),
    Case("req-not-a-mapping", req(text="requests: [1, 2]\n"), REQS, ["r.yaml", "requests", "mapping"]),
    Case("req-file-arrivals-missing", req({"requests.arrivals": {"process": "file", "path": "a.csv"}}), REQS,
         ["a.csv", "not found"]),
    Case("req-file-arrivals-negative", req({"requests.arrivals": {"process": "file", "path": "a.csv"}},
                                           a_csv="arrival_s\n-1\n"), REQS, ["a.csv", "arrival_s", "negative"]),
    Case("req-file-arrivals-binary", req({"requests.arrivals": {"process": "file", "path": "a.csv"}},
                                         a_csv=b"\x00\xff\xfe\x00\x01"), REQS, ["a.csv", "cannot read"]),
    Case("req-file-length-column-missing", req({"requests.prompt_tokens": {"dist": "file", "path": "l.csv",
                                                                          "column": "tokens"}}, l_csv="n\n5\n"),
         REQS, ["l.csv", "tokens"]),
]

MEASURED_CASES = [
    Case("meas-not-csv", measured(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\xff"), MEAS, ["m.csv", "CSV"]),
    Case("meas-empty", measured(""), MEAS, ["m.csv", "empty"]),
    Case("meas-missing-column", measured("device,op,flops,bytes\nToy-GPU,gemm,1e9,1e6\n"), MEAS, ["m.csv", "time_s"]),
    Case("meas-time-not-a-number", measured("device,op,flops,bytes,time_s\nToy-GPU,gemm,1e9,1e6,fast\n"), MEAS,
         ["m.csv", "time_s", "row"]),
    Case("meas-time-negative", measured("device,op,flops,bytes,time_s\nToy-GPU,gemm,1e9,1e6,-1\n"), MEAS,
         ["m.csv", "time_s", "line 2"]),
    Case("meas-bytes-nan", measured("device,op,flops,bytes,time_s\nToy-GPU,gemm,1e9,nan,1e-5\n"), MEAS,
         ["m.csv", "bytes", "line 2"]),
    Case("meas-flops-negative", measured("device,op,flops,bytes,time_s\nToy-GPU,gemm,-1e9,1e6,1e-5\n"), MEAS,
         ["m.csv", "flops"]),
    Case("meas-file-missing", TOY, MEAS, ["m.csv", "not found"]),
    Case("meas-directory", {**TOY, "m.csv/x": "x"}, MEAS, ["m.csv"]),
    Case("cal-table-not-csv", calibrated({}, b"\x00\x01\x02\xff\xfe"), ROOF_SC, ["m.csv", "CSV"]),
    Case("cal-table-missing-column", calibrated({}, "kind,flops,bytes\ngemm,1,1\n"), ROOF_SC, ["m.csv", "measured_s"]),
    Case("cal-compute-max-negative", calibrated({"calibration.kinds.gemm.compute_max": -1}), ROOF_SC,
         ["toy-device.yaml", "calibration.kinds.gemm.compute_max"]),
    Case("cal-overhead-nan", calibrated({"calibration.kinds.gemm.overhead": float("nan")}), ROOF_SC,
         ["toy-device.yaml", "calibration.kinds.gemm.overhead", "finite"]),
    Case("cal-link-bandwidth-zero", calibrated({"calibration.links": {"h2d": {"bandwidth": 0, "latency": 1e-6}}}), ROOF_SC,
         ["toy-device.yaml", "calibration.links", "bandwidth"]),
]

GENERATOR_CASES = [
    Case("gen-popularity-kind-unknown", gen({"synthetic.popularity.kind": "pareto"}), SYNTH,
         ["g.yaml", "popularity.kind", "zipf"]),
    Case("gen-affinity-above-1", gen({"synthetic.affinity": 1.5}), SYNTH, ["g.yaml", "affinity"]),
    Case("gen-rho-above-1", gen({"synthetic.drift": {"rho": 2}}), SYNTH, ["g.yaml", "drift.rho"]),
    Case("gen-alpha-nan", gen({"synthetic.popularity.alpha": float("nan")}), SYNTH, ["g.yaml", "alpha", "finite"]),
    Case("gen-batch-concentration-zero", gen({"synthetic.batch_concentration": 0}), SYNTH,
         ["g.yaml", "batch_concentration"]),
    Case("gen-typo-affinity", gen(text="synthetic: {afinity: 0.5}\n"), SYNTH, ["g.yaml", "afinity", "did you mean 'affinity'"]),
    Case("gen-explicit-wrong-shape", gen({"synthetic.popularity": {"kind": "explicit", "weights": [[1, 2, 3]]}}), SYNTH,
         ["g.yaml", "weights", "8"]),
    Case("gen-explicit-negative", gen({"synthetic.popularity": {"kind": "explicit", "weights": [[1] * 7 + [-1]]}}),
         SYNTH, ["g.yaml", "weights", "non-negative"]),
    Case("gen-explicit-all-zero", gen({"synthetic.popularity": {"kind": "explicit", "weights": [[0] * 8]}}), SYNTH,
         ["g.yaml", "weights"]),
    Case("gen-malformed-yaml", gen(text="synthetic: {affinity: 0.5\n"), SYNTH, ["g.yaml", "malformed YAML"]),
    Case("gen-file-missing", TOY, SYNTH, ["g.yaml", "not found"]),
    Case("gen-model-unknown", gen(), SYNTH[:4] + ["Toy-MoE9"] + SYNTH[5:], ["unknown model 'Toy-MoE9'"]),
]

# Bad command-line arguments: each message must name the argument. (moesim/cli.py checks these.)
CLI_ARG_CASES = [
    Case("arg-simulate-steps-negative", TOY, SIM + ["--steps", "-3"], ["--steps"]),
    Case("arg-simulate-steps-zero", TOY, SIM + ["--steps", "0"], ["--steps"]),
    Case("arg-simulate-steps-not-int", TOY, SIM + ["--steps", "many"], ["--steps"]),
    Case("arg-simulate-out-is-file", {**TOY, "f.txt": "x"}, ["simulate", "scenario.yaml", "--quiet", "--out", "f.txt"],
         ["--out"]),
    Case("arg-simulate-out-under-file", {**TOY, "f.txt": "x"},
         ["simulate", "scenario.yaml", "--quiet", "--out", "f.txt/run"], ["--out"]),
    Case("arg-roofline-layer", TOY, ["roofline", "scenario.yaml", "--layer", "99", "--out", "out"], ["--layer"]),
    Case("arg-roofline-rank", TOY, ["roofline", "scenario.yaml", "--rank", "99", "--out", "out"], ["--rank"]),
    Case("arg-roofline-step-negative", TOY, ["roofline", "scenario.yaml", "--step", "-1", "--out", "out"], ["--step"]),
    Case("arg-roofline-batch-zero", TOY, ROOF + ["--batch", "0"], ["--batch"]),
    Case("arg-roofline-seq-len-zero", TOY, ROOF + ["--seq-len", "0"], ["--seq-len"]),
    Case("arg-roofline-kv-len-negative", TOY, ROOF + ["--kv-len", "-1"], ["--kv-len"]),
    Case("arg-roofline-model-layer", TOY, ROOF + ["--layer", "5"], ["--layer"]),
    Case("arg-roofline-no-model", TOY, ["roofline", "--out", "out"], ["--model"]),
    Case("arg-roofline-phase-unknown", TOY, ROOF + ["--phase", "train"], ["--phase"]),
    Case("arg-trace-stats-devices-zero", {**TOY, "t.parquet": parquet()}, stats("t.parquet")[:-2] + ["--devices", "0"],
         ["--devices"]),
    Case("arg-trace-stats-max-steps-zero", {**TOY, "t.parquet": parquet()}, stats("t.parquet", "--max-steps", "0"),
         ["--max-steps"]),
    Case("arg-trace-stats-out-under-file", {**TOY, "t.parquet": parquet(), "f.txt": "x"},
         stats("t.parquet", "--out", "f.txt/stats"), ["--out"]),
    Case("arg-trace-synth-steps-zero", gen(), SYNTH + ["--steps", "0"], ["--steps"]),
    Case("arg-trace-synth-tokens-zero", gen(), SYNTH + ["--tokens", "0"], ["--tokens"]),
    Case("arg-trace-synth-sources-zero", gen(), SYNTH + ["--sources", "0"], ["--sources"]),
    Case("arg-trace-synth-out-under-file", {**gen(), "f.txt": "x"}, SYNTH[:6] + ["f.txt/t.parquet"] + SYNTH[7:],
         ["--out"]),
    Case("arg-trace-synth-no-model", gen(), ["trace", "synth", "g.yaml", "--out", "t.parquet"], ["--model"]),
    Case("arg-trace-convert-sources-zero", {**TOY, "t.jsonl": jsonl({"experts": IDS})},
         ["trace", "convert", "t.jsonl", "out.parquet", "--sources", "0"], ["--sources"]),
    Case("arg-place-steps-zero", TOY, ["place", "scenario.yaml", "--steps", "0", "--out", "out"], ["--steps"]),
    Case("arg-place-redundant-negative", TOY, ["place", "scenario.yaml", "--redundant", "-1", "--out", "out"],
         ["--redundant"]),
    Case("arg-place-slots-zero", TOY, ["place", "scenario.yaml", "--slots", "0", "--out", "out"], ["--slots"]),
    Case("arg-place-time-limit-negative", TOY, ["place", "scenario.yaml", "--time-limit", "-1", "--out", "out"],
         ["--time-limit"]),
    Case("arg-place-methods-unknown", TOY, ["place", "scenario.yaml", "--methods", "magic", "--out", "out"],
         ["--methods"]),
    Case("arg-requests-seed-negative", req(), REQS + ["--seed", "-1"], ["--seed"]),
    Case("arg-profiles-show-unknown", {}, ["profiles", "show", "h100"], ["H100-SXM"]),
    Case("arg-report-missing-run", {}, ["report", "norun"], ["norun"]),
    # a bad file named by an option: the message keeps the file and field and names the option
    # (ConfigError.given_by(option) when re-raising)
    Case("arg-roofline-device-bf16-negative", dev({"compute.bf16": "-5 TFLOPS"}), ROOF,
         ["--device", "toy-device.yaml", "compute.bf16"]),
    Case("arg-roofline-device-bf16-nan", dev({"compute.bf16": float("nan")}), ROOF,
         ["--device", "toy-device.yaml", "compute.bf16", "finite"]),
    Case("arg-roofline-model-hf-experts-zero", hf(num_local_experts=0),
         ["roofline", "--model", "config.json", "--out", "out"], ["--model", "config.json", "num_local_experts"]),
]

FILE_CASES = (CONFIG_CASES + DEVICE_CASES + LINK_CASES + CLUSTER_CASES + HF_CASES + TRACE_CASES + PLACEMENT_CASES
              + REQUEST_CASES + MEASURED_CASES + GENERATOR_CASES)
CASES = FILE_CASES + CLI_ARG_CASES


def run_case(case: Case, folder: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> tuple[Any, str]:
    for name, content in case.files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        data = content() if callable(content) else content
        path.write_bytes(data) if isinstance(data, bytes) else path.write_text(data)
    monkeypatch.chdir(folder)
    argv = [str(folder / a) if a in case.files else a for a in case.argv]
    try:
        rc = cli.main(argv)
    except SystemExit as exit_:
        rc = exit_.code
    return rc, capsys.readouterr().err


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    rc, err = run_case(case, tmp_path, monkeypatch, capsys)
    assert "Traceback" not in err, err
    assert rc == 2, f"exit status {rc!r}, stderr: {err}"
    missing = [w for w in case.words if w.lower() not in err.lower()]
    assert not missing, f"message lacks {missing}: {err}"


def test_case_table(capsys: pytest.CaptureFixture) -> None:
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids)), "case ids must be unique"
    assert len(CASES) >= 100
    with capsys.disabled():
        print(f"\nbad-input cases: {len(CASES)} ({len(FILE_CASES)} input files, {len(CLI_ARG_CASES)} arguments)")
