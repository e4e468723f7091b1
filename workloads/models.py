"""Load model specs: bundled names, spec YAML files, or Hugging Face `config.json` files."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

from moesim.errors import ConfigError, unknown_name
from moesim.workloads.model_spec import ModelSpec
from moesim.yaml_io import load_yaml, validate

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
    if path.suffix == ".json" or path.is_dir():
        return _load_hf(path / "config.json" if path.is_dir() else path)
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
    try:
        cfg = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError("file not found", file=path) from None
    except json.JSONDecodeError as err:
        raise ConfigError(f"malformed JSON at line {err.lineno}: {err.msg}", file=path) from None
    if not isinstance(cfg, dict):
        raise ConfigError("expected a JSON object", file=path)
    try:
        data = hf_config_to_spec(cfg, default_name=path.parent.name or path.stem)
    except KeyError as err:
        raise ConfigError(f"required field {err.args[0]} is missing", file=path, field=err.args[0]) from None
    return validate(ModelSpec, data, path)


def _first(cfg: dict[str, Any], *keys: str, default: Any = KeyError) -> Any:
    for key in keys:
        if cfg.get(key) is not None:
            return cfg[key]
    if default is KeyError:
        raise KeyError(keys[0])
    return default


_HF_DTYPE = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32", "float8_e4m3fn": "fp8"}


def hf_config_to_spec(cfg: dict[str, Any], default_name: str = "hf-model") -> dict[str, Any]:
    """Map the fields Hugging Face MoE configs use (Mixtral, DeepSeek, Qwen-MoE, OLMoE, GPT-OSS,
    Switch) onto a ModelSpec mapping. Missing MoE fields fail loudly rather than guess."""
    cfg = {**cfg.get("text_config", {}), **cfg} if "text_config" in cfg else cfg
    hidden = _first(cfg, "hidden_size", "d_model")
    heads = _first(cfg, "num_attention_heads", "num_heads")
    layers = _first(cfg, "num_hidden_layers", "num_layers")
    layers += int(cfg.get("num_decoder_layers") or 0)  # encoder-decoder (Switch/T5): both stacks
    experts = _first(cfg, "num_local_experts", "n_routed_experts", "num_experts")
    top_k = _first(cfg, "num_experts_per_tok", "experts_per_token", "moe_topk", "num_selected_experts",
                   default=1 if "switch" in str(cfg.get("model_type", "")) else KeyError)
    dense_ffn = _first(cfg, "intermediate_size", "d_ff", "ffn_dim")
    expert_ffn = _first(cfg, "moe_intermediate_size", "expert_intermediate_size", default=dense_ffn)
    shared = int(_first(cfg, "n_shared_experts", "num_shared_experts", default=0) or 0)
    shared_size = _first(cfg, "shared_expert_intermediate_size", default=None)
    if shared_size and not shared:
        shared = 1  # Qwen2-MoE style: one shared expert of its own width
    first_dense = int(_first(cfg, "first_k_dense_replace", default=0) or 0)
    freq = int(_first(cfg, "moe_layer_freq", "decoder_sparse_step", "encoder_sparse_step", default=1) or 1)
    if cfg.get("kv_lora_rank"):
        attention: dict[str, Any] = {
            "type": "mla",
            "num_heads": heads,
            "q_lora_rank": cfg.get("q_lora_rank"),
            "kv_lora_rank": cfg["kv_lora_rank"],
            "qk_nope_head_dim": _first(cfg, "qk_nope_head_dim"),
            "qk_rope_head_dim": _first(cfg, "qk_rope_head_dim"),
            "v_head_dim": _first(cfg, "v_head_dim"),
        }
    else:
        kv_heads = _first(cfg, "num_key_value_heads", default=heads)
        attention = {
            "type": "gqa",
            "num_heads": heads,
            "num_kv_heads": kv_heads,
            "head_dim": _first(cfg, "head_dim", "d_kv", default=hidden // heads),
        }
        window = cfg.get("sliding_window")
        if window and cfg.get("use_sliding_window", True):
            attention["sliding_window"] = window
            types = cfg.get("layer_types")
            if types:  # GPT-OSS style alternating layers
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
        "vocab_size": _first(cfg, "vocab_size"),
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
        },
        "dtype": dtype,
        "sources": {"*": "Hugging Face config.json"},
    }
    quant = cfg.get("quantization_config") or {}
    if quant.get("quant_method") == "mxfp4":
        spec["expert_dtype"] = "mxfp4"
    elif quant.get("quant_method") == "fp8":
        spec["dtype"] = "fp8"  # W8A8 block-scaled weights; the KV cache stays 16-bit
        spec["kv_dtype"] = "bf16"
    return spec
