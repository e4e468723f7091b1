"""The largest deployments (issue 27): the bundled H800 EP320, CloudMatrix384, GB200 NVL72 (one rack and
four), HGX B200 clusters, their devices and links, and the newest big MoE models, checked against the
numbers their cited sources give; topologies on cut-down copies; placements on more devices than experts."""

import numpy as np
import pytest

from moesim.hardware_profiles import build_topology, compute_routes, load_cluster, load_device, load_link
from moesim.hardware_profiles.schema import ClusterSpec
from moesim.placement import contiguous
from moesim.placement.baselines import BASELINES
from moesim.placement.evaluate import check_placement
from moesim.placement.placement import round_robin, with_redundant_slots
from moesim.placement.problem import PlacementProblem, uniform_slots
from moesim.simulator.memory import estimate_memory
from moesim.simulator.ops import gemm_dtype
from moesim.workloads import load_model
from moesim.workloads.models import hf_config_to_spec

NEW_CLUSTERS = {"h800-40x8": 320, "cloudmatrix384": 384, "gb200-nvl72": 72, "gb200-nvl72-x4": 288, "b200-hgx": 8}


# --- profiles: each loads, and a few numbers are what the cited source says -----------------------------

@pytest.mark.parametrize("name, devices", sorted(NEW_CLUSTERS.items()))
def test_new_clusters_load_with_their_sizes_and_cite_them(name, devices):
    cluster = load_cluster(name)
    assert cluster.num_devices == devices
    assert {"nodes", "node.devices_per_node"} <= set(cluster.sources)


def test_gb200_is_the_nvl72_rack_divided_by_72():
    gb = load_device("GB200")  # NVIDIA GB200 NVL72: 13.4 TB, 576 TB/s, 1,440 PF FP4 and 360 PF BF16 (sparse)
    assert gb.memory.capacity == pytest.approx(13.4e12 / 72, rel=0.01)
    assert gb.memory.bandwidth == pytest.approx(576e12 / 72)
    assert gb.peak_flops("fp4") == pytest.approx(1440e15 / 72 / 2)
    assert gb.peak_flops("bf16") == pytest.approx(360e15 / 72 / 2)
    assert gb.peak_flops("fp8") == pytest.approx(720e15 / 72 / 2)


def test_blackwell_devices_compute_fp4_and_block_scaled_fp4_natively():
    b200, gb200, h800 = (load_device(n) for n in ("B200", "GB200", "H800"))
    assert b200.peak_flops("fp4") == pytest.approx(144e15 / 8 / 2)  # DGX B200: 144 PF FP4 (sparse) for 8 GPUs
    for dev in (b200, gb200):
        for fmt in ("fp4", "nvfp4", "mxfp4"):
            assert gemm_dtype(fmt, set(dev.compute), "bf16") == fmt  # an fp4 expert GEMM runs on the fp4 cores
            assert dev.peak_flops(fmt) == dev.peak_flops("fp4") == 2 * dev.peak_flops("fp8")
    assert gemm_dtype("nvfp4", set(h800.compute), "bf16") == "bf16"  # Hopper has no fp4: weight-only, dequantized


def test_ascend_910c_and_its_unified_bus_follow_the_cloudmatrix_paper():
    npu = load_device("Ascend-910C")  # arXiv 2506.12708: 752 TFLOPS BF16, 128 GB HBM, 3.2 TB/s per 910C
    assert npu.peak_flops("bf16") == pytest.approx(752e12)
    assert npu.memory.capacity == pytest.approx(128e9)
    assert npu.memory.bandwidth == pytest.approx(3.2e12)
    assert npu.peak_flops("fp8") == npu.peak_flops("bf16")  # no native fp8
    ub = load_link("UB")
    assert ub.kind == "ub" and ub.bandwidth == pytest.approx(392e9)  # 392 GB/s unidirectional per 910C
    assert load_device("Ascend-910B").memory.capacity * 2 == npu.memory.capacity  # one die = a 910B-class chip


def test_scale_out_links():
    assert load_link("InfiniBand-XDR").bandwidth == pytest.approx(100e9)  # 800 Gb/s
    assert load_link("PCIe6-x16").bandwidth == pytest.approx(128e9)  # 64 GT/s x 16 lanes
    assert load_link("PCIe6-x16").bandwidth > load_link("InfiniBand-XDR").bandwidth  # the attach does not bind


# --- topologies of cut-down copies: bytes go over the right links ---------------------------------------

def _cut_down(name: str, **node: object) -> ClusterSpec:
    """A validated copy of a bundled cluster with fewer nodes or devices (`nodes` or node fields)."""
    data = load_cluster(name).model_dump()
    if "nodes" in node:
        data["nodes"] = node.pop("nodes")
    units = node.pop("units", None)
    data["node"].update(node)
    if units is not None:
        data["node"]["units"] = units
    return ClusterSpec.model_validate(data)


def _path(routes, src: int, dst: int) -> tuple[list[str], list[str]]:
    """(link classes, link profile names) of the path src -> dst."""
    links = routes.path_links(src, dst)
    return [routes.link_class[i] for i in links], list(links)


def test_two_nodes_of_h800_40x8_use_nvlink_inside_and_infiniband_across():
    cluster = _cut_down("h800-40x8", nodes=2)
    routes = compute_routes(build_topology(cluster))
    assert routes.num_devices == 16
    inside, _ = _path(routes, 0, 7)
    assert inside == ["nvlink", "nvlink"] and not routes.pair_inter_node[0, 7]
    across, _ = _path(routes, 0, 8)
    assert across == ["pcie", "infiniband", "infiniband", "pcie"] and routes.pair_inter_node[0, 8]
    assert routes.slowest_bandwidth(0, 8) == pytest.approx(50e9 * 0.8)  # 400 Gb/s IB at 0.8 binds
    assert routes.slowest_bandwidth(0, 1) == pytest.approx(200e9 * 0.8)  # H800 NVLink at 0.8 (DeepSeek's 160 GB/s)


def test_two_gb200_racks_use_nvlink5_inside_a_rack_and_xdr_between():
    routes = compute_routes(build_topology(_cut_down("gb200-nvl72-x4", nodes=2)))
    assert routes.num_devices == 144
    inside, _ = _path(routes, 0, 71)
    assert inside == ["nvlink", "nvlink"] and not routes.pair_inter_node[0, 71]
    assert routes.slowest_bandwidth(0, 71) == pytest.approx(900e9 * 0.8)
    across, _ = _path(routes, 0, 72)
    assert across == ["pcie", "infiniband", "infiniband", "pcie"] and routes.pair_inter_node[0, 72]
    assert routes.slowest_bandwidth(0, 143) == pytest.approx(100e9 * 0.8)  # the 800 Gb/s NIC, not PCIe6, binds


def test_a_cloudmatrix_slice_is_one_ub_domain():
    cluster = _cut_down("cloudmatrix384", devices_per_node=16,
                        units=[{"name": "host", "device": "Kunpeng-920", "count": 8, "link": "UB"}])
    routes = compute_routes(build_topology(cluster))
    assert routes.num_devices == 16
    for dst in (1, 8, 15):  # neighbours on one board and across boards: all one hop to the UB switch and back
        classes, _ = _path(routes, 0, dst)
        assert classes == ["ub", "ub"] and not routes.pair_inter_node[0, dst]
    assert routes.slowest_bandwidth(0, 15) == pytest.approx(392e9 * 0.8)


# --- placement on more devices than experts (EP320, EP384) and on an ep that does not divide them ------------

@pytest.mark.parametrize("experts, devices", [(256, 320), (256, 384), (256, 72), (256, 144)])
def test_redundant_slots_fill_every_device_equally(experts, devices):
    for base in (contiguous(experts, devices, 2), round_robin(experts, devices, 2)):
        pl = with_redundant_slots(base)
        per_device = pl.experts_per_device()
        assert (per_device == -(-experts // devices)).all()  # every device the same slot count
        copies = (pl.shares() > 0).sum(axis=2)
        assert (copies >= 1).all() and np.allclose(pl.shares().sum(axis=2), 1.0)  # every expert served


def _problem(experts: int, devices: int, per_node: int, layers: int = 2) -> PlacementProblem:
    """A placement problem as `moesim place` builds one: redundant copies fill every device's slots."""
    rng = np.random.default_rng(0)
    load = rng.gamma(2.0, 10.0, (layers, experts))
    dispatch = np.repeat(load[:, None, :] / devices, devices, axis=1)
    redundant = devices * -(-experts // devices) - experts
    return PlacementProblem(load, dispatch, np.zeros((layers - 1, experts, experts)), 2,
                            np.arange(devices) // per_node, np.zeros((devices, devices)),
                            uniform_slots(experts, devices, redundant), redundant)


@pytest.mark.parametrize("experts, devices, per_node", [(16, 20, 4), (16, 24, 8), (16, 12, 4)])
def test_place_baselines_give_every_device_the_same_slots_and_every_expert_one(experts, devices, per_node):
    problem = _problem(experts, devices, per_node)
    for name in ("contiguous", "round_robin", "eplb", "eplb_hierarchical"):
        pl = BASELINES[name](problem, 0)
        check_placement(pl, problem)
        per_device = pl.experts_per_device()
        assert per_device.min() >= 1, name  # no device left without an expert
        assert ((pl.shares() > 0).sum(axis=2) >= 1).all(), name
        if name != "eplb_hierarchical":  # EPLB as published may put two replicas of one expert on a GPU (merged)
            assert (per_device == -(-experts // devices)).all(), name


def test_a_scenario_whose_ep_does_not_divide_the_experts_gets_its_placement():
    from moesim.simulator.scenario import load_scenario

    sc = load_scenario({"name": "dsv3-nvl72", "model": "DeepSeek-V3", "hardware": {"cluster": "gb200-nvl72"},
                        "parallelism": {"ep": 72, "tp": 1, "dp": 72}, "placement": {"policy": "contiguous"},
                        "workload": {"phase": "decode", "batch_size": 8, "kv_len": 512, "steps": 1,
                                     "routing": {"generator": "uniform"}}})
    per_device = sc.placement.experts_per_device()
    assert (per_device == 4).all()  # 256 experts + 32 copies on 72 GPUs, as DeepSeek serves EP144 / EP320


# --- models: the Hugging Face config.json fields map onto the bundled specs -------------------------------

KIMI_K2 = {  # https://huggingface.co/moonshotai/Kimi-K2-Instruct/blob/main/config.json (shape fields)
    "architectures": ["DeepseekV3ForCausalLM"], "model_type": "kimi_k2", "hidden_size": 7168,
    "intermediate_size": 18432, "moe_intermediate_size": 2048, "num_hidden_layers": 61, "num_attention_heads": 64,
    "num_key_value_heads": 64, "n_routed_experts": 384, "n_shared_experts": 1, "num_experts_per_tok": 8,
    "first_k_dense_replace": 1, "moe_layer_freq": 1, "n_group": 1, "topk_group": 1, "q_lora_rank": 1536,
    "kv_lora_rank": 512, "qk_nope_head_dim": 128, "qk_rope_head_dim": 64, "v_head_dim": 128,
    "vocab_size": 163840, "hidden_act": "silu", "torch_dtype": "bfloat16", "num_nextn_predict_layers": 0,
    "quantization_config": {"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8",
                            "weight_block_size": [128, 128]},
}
GLM_45 = {  # https://huggingface.co/zai-org/GLM-4.5/blob/main/config.json (shape fields)
    "architectures": ["Glm4MoeForCausalLM"], "model_type": "glm4_moe", "hidden_size": 5120,
    "intermediate_size": 12288, "moe_intermediate_size": 1536, "num_hidden_layers": 92, "num_attention_heads": 96,
    "num_key_value_heads": 8, "head_dim": 128, "n_routed_experts": 160, "n_shared_experts": 1,
    "num_experts_per_tok": 8, "first_k_dense_replace": 3, "n_group": 1, "topk_group": 1, "vocab_size": 151552,
    "hidden_act": "silu", "partial_rotary_factor": 0.5, "num_nextn_predict_layers": 1, "torch_dtype": "bfloat16",
}
LLAMA4_MAVERICK = {  # https://huggingface.co/meta-llama/Llama-4-Maverick-17B-128E/blob/main/config.json
    "architectures": ["Llama4ForConditionalGeneration"], "model_type": "llama4", "torch_dtype": "bfloat16",
    "text_config": {"model_type": "llama4_text", "hidden_size": 5120, "intermediate_size": 8192,
                    "intermediate_size_mlp": 16384, "num_hidden_layers": 48, "num_attention_heads": 40,
                    "num_key_value_heads": 8, "head_dim": 128, "num_local_experts": 128, "num_experts_per_tok": 1,
                    "interleave_moe_layer_step": 2, "attention_chunk_size": 8192, "no_rope_layer_interval": 4,
                    "vocab_size": 202048, "hidden_act": "silu", "torch_dtype": "bfloat16"},
    "vision_config": {"model_type": "llama4_vision_model"},
}
DEEPSEEK_V32 = {  # https://huggingface.co/deepseek-ai/DeepSeek-V3.2/blob/main/config.json (shape fields)
    "architectures": ["DeepseekV32ForCausalLM"], "model_type": "deepseek_v32", "hidden_size": 7168,
    "intermediate_size": 18432, "moe_intermediate_size": 2048, "num_hidden_layers": 61, "num_attention_heads": 128,
    "num_key_value_heads": 128, "n_routed_experts": 256, "n_shared_experts": 1, "num_experts_per_tok": 8,
    "first_k_dense_replace": 3, "moe_layer_freq": 1, "n_group": 8, "topk_group": 4, "q_lora_rank": 1536,
    "kv_lora_rank": 512, "qk_nope_head_dim": 128, "qk_rope_head_dim": 64, "v_head_dim": 128,
    "index_n_heads": 64, "index_head_dim": 128, "index_topk": 2048, "vocab_size": 129280, "hidden_act": "silu",
    "torch_dtype": "bfloat16", "quantization_config": {"quant_method": "fp8", "fmt": "e4m3",
                                                       "weight_block_size": [128, 128]},
}


@pytest.mark.parametrize("config, bundled", [(KIMI_K2, "Kimi-K2-Instruct"), (GLM_45, "GLM-4.5"),
                                             (LLAMA4_MAVERICK, "Llama-4-Maverick-17B-128E"),
                                             (DEEPSEEK_V32, "DeepSeek-V3.2")])
def test_hugging_face_config_maps_onto_the_bundled_spec(config, bundled):
    spec, hf = load_model(bundled), hf_config_to_spec(config)
    ignored = {"name", "sources", "notes"}
    want = {k: v for k, v in spec.model_dump(exclude_none=True).items() if k not in ignored}
    from moesim.workloads.model_spec import ModelSpec

    got = {k: v for k, v in ModelSpec.model_validate(hf).model_dump(exclude_none=True).items() if k not in ignored}
    assert got == want


def test_llama4_maverick_interleaves_moe_layers_with_a_shared_expert():
    m = load_model("Llama-4-Maverick-17B-128E")
    assert m.moe_layers == list(range(1, 48, 2))  # transformers: range(step - 1, layers, step)
    assert m.moe.num_shared_experts == 1 and m.shared_size == m.moe.expert_intermediate_size == 8192
    assert m.dense_intermediate_size == 16384


@pytest.mark.parametrize("name, bytes_per_param, published, rel", [
    ("Kimi-K2-Instruct", 1, 1.04e12, 0.02),  # Kimi K2 technical report: 1.04T total parameters
    ("GLM-4.5", 2, 355e9, 0.01),  # GLM-4.5: 355B total (the MTP layer not counted here)
    ("Llama-4-Maverick-17B-128E", 2, 400e9, 0.01),  # Meta: 400B total (text model)
    ("DeepSeek-V3.2", 1, 671e9, 0.01),  # the DeepSeek-V3 shapes: 671B main model
])
def test_parameter_counts_match_the_published_totals(name, bytes_per_param, published, rel):
    m = load_model(name)
    placement = contiguous(m.moe.num_experts, 1, len(m.moe_layers))
    mem = estimate_memory(m, placement, tp=1, batch=1, kv_len=0, attn_tokens=1, moe_tokens=1)
    assert mem.weights / bytes_per_param == pytest.approx(published, rel=rel)
