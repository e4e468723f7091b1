"""Load model specs: bundled names, spec YAML files, or Hugging Face `config.json` files."""

from __future__ import annotations

import json
import math
from functools import lru_cache
from pathlib import Path
from typing import Any

from moesim.errors import ConfigError, unknown_name
from moesim.workloads.model_spec import ModelSpec
from moesim.yaml_io import load_yaml, read_text_file, validate

MODEL_DIR = Path(__file__).resolve().parent / "models"


@lru_cache(maxsize=None)
def _bundled() -> dict[str, Path]:
    return {str(load_yaml(p).get("name", p.stem)): p for p in sorted(MODEL_DIR.glob("*.yaml"))}


def list_models() -> list[str]:
    return sorted(_bundled())


def load_model(name_or_path: str | Path) -> ModelSpec:
    """A model by bundled name (case-insensitive), spec YAML path, or HF config.json path."""
    text = str(name_or_path)
    path = Path(text)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ConfigError("is a directory with no config.json in it; give a model YAML, a Hugging Face "
                              "config.json or the folder that holds one", file=path)
        return _load_hf(path / "config.json")
    if path.suffix == ".json":
        return _load_hf(path)
    if path.suffix in (".yaml", ".yml"):
        return _load_yaml(path)
    lookup = {k.lower(): v for k, v in _bundled().items()}
    if text.lower() in lookup:
        return _load_yaml(lookup[text.lower()])
    raise ConfigError(unknown_name("model", text, _bundled()))


@lru_cache(maxsize=None)
def _load_yaml(path: Path) -> ModelSpec:
    return validate(ModelSpec, load_yaml(path), path)


def _load_hf(path: Path) -> ModelSpec:
    """A Hugging Face config.json: read, check its counts (errors name the HF key), map, validate."""
    text = read_text_file(path, "JSON config")
    try:
        cfg = json.loads(text)
    except json.JSONDecodeError as err:
        raise ConfigError(f"malformed JSON at line {err.lineno}, column {err.colno}: {err.msg}", file=path) from None
    if not isinstance(cfg, dict):
        raise ConfigError(f"expected a JSON object, found {type(cfg).__name__}", file=path)
    origin: dict[str, str] = {}
    try:
        data = hf_config_to_spec(cfg, default_name=path.parent.name or path.stem, origin=origin)
    except HFConfigError as err:
        raise ConfigError(err.message, file=path, field=err.key) from None
    try:
        return validate(ModelSpec, data, path)
    except ConfigError as err:  # name the config.json key the bad value came from
        key = origin.get(err.field or "")
        if key is None:
            raise
        raise ConfigError(f"{err.detail} (read as moesim's {err.field})", file=path, field=key) from None


class HFConfigError(ValueError):
    """A Hugging Face config field that is missing or not a usable number."""

    def __init__(self, key: str, message: str):
        super().__init__(f"{key}: {message}")
        self.key, self.message = key, message


def _first(cfg: dict[str, Any], *keys: str, default: Any = KeyError) -> Any:
    for key in keys:
        if cfg.get(key) is not None:
            return cfg[key]
    if default is KeyError:
        raise HFConfigError(keys[0], "required field is missing" + (
            f" (also accepted: {', '.join(keys[1:])})" if len(keys) > 1 else ""))
    return default


def _key(cfg: dict[str, Any], *keys: str) -> str:
    """Which of the alternative keys the config uses (the first, if none)."""
    return next((k for k in keys if cfg.get(k) is not None), keys[0])


def _count(cfg: dict[str, Any], *keys: str, default: Any = KeyError, minimum: int = 1,
           origin: dict[str, str] | None = None, spec: str | None = None) -> Any:
    """A whole-number field (the first of `keys` present) that must be >= minimum."""
    value = _first(cfg, *keys, default=default)
    if value is default and default is not KeyError:
        return value
    key = _key(cfg, *keys)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (
            isinstance(value, float) and not (math.isfinite(value) and value.is_integer())):
        raise HFConfigError(key, f"expected a whole number, got {value!r}")
    if value < minimum:
        raise HFConfigError(key, f"must be >= {minimum}, got {value!r}")
    if origin is not None and spec is not None:
        origin[spec] = key
    return int(value)


_HF_DTYPE = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32", "float8_e4m3fn": "fp8"}


def hf_config_to_spec(cfg: dict[str, Any], default_name: str = "hf-model",
                      origin: dict[str, str] | None = None) -> dict[str, Any]:
    """Map the fields Hugging Face MoE configs use (Mixtral, DeepSeek and Kimi K2, Qwen-MoE, GLM-4.5, OLMoE,
    GPT-OSS, Llama 4, Switch) onto a ModelSpec mapping. Missing MoE fields fail loudly rather than guess; a count
    that is not a whole number of the right size raises HFConfigError naming the HF key.
    `origin`, if given, is filled with ModelSpec field path -> the HF key it was read from."""
    if "text_config" in cfg:
        if not isinstance(cfg["text_config"], dict):
            raise HFConfigError("text_config", f"expected a JSON object, got {type(cfg['text_config']).__name__}")
        cfg = {**cfg["text_config"], **cfg}
    o = origin if origin is not None else {}

    def count(spec: str | None, *keys: str, default: Any = KeyError, minimum: int = 1) -> Any:
        return _count(cfg, *keys, default=default, minimum=minimum, origin=o, spec=spec)

    hidden = count("hidden_size", "hidden_size", "d_model")
    heads = count("attention.num_heads", "num_attention_heads", "num_heads")
    layers = count("num_layers", "num_hidden_layers", "num_layers")
    layers += count(None, "num_decoder_layers", default=0, minimum=0) or 0  # encoder-decoder (Switch/T5): both stacks
    experts = count("moe.num_experts", "num_local_experts", "n_routed_experts", "num_experts")
    top_k = count("moe.top_k", "num_experts_per_tok", "experts_per_token", "moe_topk", "num_selected_experts",
                  default=1 if "switch" in str(cfg.get("model_type", "")) else KeyError)
    if top_k > experts:
        raise HFConfigError(_key(cfg, "num_experts_per_tok", "experts_per_token", "moe_topk", "num_selected_experts"),
                            f"{top_k} experts per token exceeds the {experts} experts "
                            f"({_key(cfg, 'num_local_experts', 'n_routed_experts', 'num_experts')})")
    # Llama 4: intermediate_size_mlp is the dense layers' FFN and intermediate_size the experts' (routed and shared)
    llama4 = str(cfg.get("model_type", "")).startswith("llama4") or cfg.get("intermediate_size_mlp") is not None
    dense_ffn = count("dense_intermediate_size", *(("intermediate_size_mlp",) if llama4 else ()), "intermediate_size",
                      "d_ff", "ffn_dim")
    if llama4:
        expert_ffn = count("moe.expert_intermediate_size", "moe_intermediate_size", "expert_intermediate_size",
                           "intermediate_size")
    else:
        expert_ffn = count("moe.expert_intermediate_size", "moe_intermediate_size", "expert_intermediate_size",
                           default=dense_ffn)
    shared = count("moe.num_shared_experts", "n_shared_experts", "num_shared_experts", default=0, minimum=0) or 0
    shared_size = count(None, "shared_expert_intermediate_size", default=None, minimum=0)
    if shared_size and not shared:
        shared = 1  # Qwen2-MoE style: one shared expert of its own width
    if llama4 and not shared:
        shared = 1  # Llama4TextMoe always adds one shared expert of intermediate_size (the config has no field)
    first_dense = count("moe.first_dense_layers", "first_k_dense_replace", default=0, minimum=0) or 0
    if first_dense > layers:
        raise HFConfigError("first_k_dense_replace", f"{first_dense} dense layers exceed the {layers} layers")
    freq = count("moe.layer_freq", "moe_layer_freq", "decoder_sparse_step", "encoder_sparse_step",
                 "interleave_moe_layer_step", default=1, minimum=0) or 1  # Llama 4: layers step-1, 2*step-1, ...
    count("vocab_size", "vocab_size")
    groups = count("moe.expert_groups", "n_group", default=1) or 1
    if experts % groups:
        raise HFConfigError("n_group", f"{groups} expert groups do not divide the {experts} experts")
    if cfg.get("kv_lora_rank"):
        attention: dict[str, Any] = {
            "type": "mla",
            "num_heads": heads,
            "q_lora_rank": count("attention.q_lora_rank", "q_lora_rank", default=None),
            "kv_lora_rank": count("attention.kv_lora_rank", "kv_lora_rank"),
            "qk_nope_head_dim": count("attention.qk_nope_head_dim", "qk_nope_head_dim"),
            "qk_rope_head_dim": count("attention.qk_rope_head_dim", "qk_rope_head_dim"),
            "v_head_dim": count("attention.v_head_dim", "v_head_dim"),
        }
    else:
        kv_heads = count("attention.num_kv_heads", "num_key_value_heads", default=heads)
        if heads % kv_heads:
            raise HFConfigError("num_key_value_heads", f"{kv_heads} key/value heads must divide the {heads} "
                                f"attention heads ({_key(cfg, 'num_attention_heads', 'num_heads')})")
        attention = {
            "type": "gqa",
            "num_heads": heads,
            "num_kv_heads": kv_heads,
            "head_dim": count("attention.head_dim", "head_dim", "d_kv", default=max(1, hidden // heads)),
        }
        window = count("attention.sliding_window", "sliding_window", default=None, minimum=0)
        if window and cfg.get("use_sliding_window", True):
            attention["sliding_window"] = window
            types = cfg.get("layer_types")
            if isinstance(types, list) and types and all(isinstance(t, str) for t in types):  # GPT-OSS style alternating layers
                windowed = sum(1 for t in types if "sliding" in t)
                attention["sliding_window_every"] = max(1, round(len(types) / max(windowed, 1)))
            else:
                attention["sliding_window_every"] = 1
    act = str(_first(cfg, "hidden_act", "dense_act_fn", "feed_forward_proj", default="silu"))
    activation = "swiglu" if act in ("silu", "swiglu", "gated-gelu", "gated-silu") else ("gelu" if "gelu" in act else "relu")
    dtype = _HF_DTYPE.get(str(cfg.get("torch_dtype", "bfloat16")), "bf16")
    spec: dict[str, Any] = {
        "name": cfg.get("_name_or_path") or cfg.get("model_type") or default_name,
        "num_layers": layers,
        "hidden_size": hidden,
        "vocab_size": count("vocab_size", "vocab_size"),
        "dense_intermediate_size": dense_ffn,
        "activation": activation,
        "attention": attention,
        "moe": {
            "num_experts": experts,
            "top_k": top_k,
            "expert_intermediate_size": expert_ffn,
            "num_shared_experts": shared,
            "shared_intermediate_size": (shared_size // shared if shared_size and shared else None),
            "first_dense_layers": first_dense,
            "layer_freq": freq,
            "expert_groups": groups,
        },
        "dtype": dtype,
        "sources": {"*": "Hugging Face config.json"},
    }
    quant = cfg.get("quantization_config") or {}
    if not isinstance(quant, dict):
        raise HFConfigError("quantization_config", f"expected a JSON object, got {type(quant).__name__}")
    if quant.get("quant_method") == "mxfp4":
        spec["expert_dtype"] = "mxfp4"
    elif quant.get("quant_method") == "fp8":
        spec["dtype"] = "fp8"  # W8A8 block-scaled weights; the KV cache stays 16-bit
        spec["kv_dtype"] = "bf16"
    return spec
