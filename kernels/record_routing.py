"""Record real routing decisions from torch MoE forward passes as a moesim routing trace.

Two sources of real routing:
- `record_tiny_model`: trains `TinyMoEModel` for a few seconds on synthetic "topic" text (each
  topic its own sub-vocabulary and Markov chain, topics of unequal frequency) with a weak
  load-balancing loss, so its routing is skewed the way trained routers are, then records it.
  Also writes the tiny model's spec YAML, so the trace validates against a ModelSpec.
- `record_hf_checkpoint`: hooks the router gates of a local Hugging Face MoE checkpoint
  (Mixtral, Qwen-MoE, DeepSeek, OLMoE) and records top-k of their logits (needs transformers).

CLI: `python -m moesim.kernels.record_routing [--checkpoint DIR --text-file F] --out trace.parquet`.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import yaml

from moesim.errors import MoesimError
from moesim.workloads.model_spec import ModelSpec
from moesim.workloads.trace_format import StepRows, TraceMeta, TraceWriter


class Recorded(NamedTuple):
    """Where a recording went: the trace, and the model spec (YAML or HF config) it validates against."""

    trace: Path
    model: Path


@contextmanager
def _one_thread(torch):
    """Run torch single-threaded: the tiny model's ops are too small to gain from more threads, and
    spinning intra-op threads slow down badly when other processes share the cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _require_torch():
    try:
        import torch
    except ImportError:
        raise MoesimError("recording real routing needs torch: pip install 'moesim[calibrate]' "
                          "(or pip install torch)") from None
    return torch


# --- synthetic data whose structure makes routing non-uniform ---------------------------------

@dataclass
class TopicMarkovData:
    """Sequences from `num_topics` topics: topic t owns a contiguous slice of the vocabulary and a
    sparse random Markov chain over it; topic frequencies fall off as 1/(t+1) (Zipf)."""

    vocab: int
    num_topics: int
    seed: int
    concentration: float = 0.3  # Dirichlet alpha of each transition row: small = peaked chains

    def __post_init__(self) -> None:
        if self.vocab < 2 * self.num_topics:
            raise ValueError(f"vocab={self.vocab} too small for {self.num_topics} topics")
        rng = np.random.default_rng([self.seed, 0])
        self.topic_size = self.vocab // self.num_topics
        freq = 1.0 / np.arange(1, self.num_topics + 1)
        self.topic_probs = freq / freq.sum()
        trans = rng.dirichlet(np.full(self.topic_size, self.concentration), size=(self.num_topics, self.topic_size))
        self.cdf = np.cumsum(trans, axis=-1)  # (topics, from, to)
        self.cdf[..., -1] = 1.0

    def sample(self, rng: np.random.Generator, batch: int, length: int) -> np.ndarray:
        """(batch, length) token ids; each row is one topic's Markov chain from a uniform start."""
        topic = rng.choice(self.num_topics, size=batch, p=self.topic_probs)
        local = np.empty((batch, length), dtype=np.int64)
        local[:, 0] = rng.integers(0, self.topic_size, size=batch)
        for t in range(1, length):
            u = rng.random(batch)
            local[:, t] = (u[:, None] > self.cdf[topic, local[:, t - 1]]).sum(axis=1)
        np.minimum(local, self.topic_size - 1, out=local)
        return local + (topic * self.topic_size)[:, None]


# --- the tiny model ---------------------------------------------------------------------------

@dataclass(frozen=True)
class TinyConfig:
    """Shape of the tiny model and its data (defaults train in a few seconds on 2 CPU cores)."""

    vocab: int = 64
    hidden: int = 32
    layers: int = 2
    experts: int = 8
    top_k: int = 2
    intermediate: int = 64
    topics: int = 4
    seq_len: int = 32
    batch: int = 32
    lr: float = 3e-3
    aux_coef: float = 0.01  # weak: routing stays skewed but does not collapse onto one expert
    name: str = "TinyMoE-recorded"


def tiny_model_spec(cfg: TinyConfig) -> dict:
    """The tiny model as a ModelSpec mapping. Attention fields are nominal (valid, sized to the hidden
    width): the model mixes tokens with a causal running mean, not attention."""
    heads = 4 if cfg.hidden % 4 == 0 else 1
    data = {
        "name": cfg.name,
        "num_layers": cfg.layers,
        "hidden_size": cfg.hidden,
        "vocab_size": cfg.vocab,
        "dense_intermediate_size": cfg.intermediate,
        "activation": "swiglu",
        "attention": {"type": "gqa", "num_heads": heads, "num_kv_heads": heads, "head_dim": cfg.hidden // heads},
        "moe": {"num_experts": cfg.experts, "top_k": cfg.top_k, "expert_intermediate_size": cfg.intermediate},
        "dtype": "fp32",
        "notes": ("Tiny MoE trained by moesim.kernels.record_routing on synthetic topic/Markov text; every layer "
                  "is MoE; attention fields are nominal (the model mixes tokens with a causal running mean)."),
    }
    ModelSpec.model_validate(data)  # fail here, not when the trace is opened
    return data


def train_tiny_model(cfg: TinyConfig, data: TopicMarkovData, train_steps: int, seed: int):
    """Build TinyMoEModel and train it with Adam on next-token loss + aux_coef * load-balancing loss."""
    torch = _require_torch()
    from moesim.kernels.moe_layer import TinyMoEModel

    torch.manual_seed(seed)
    model = TinyMoEModel(cfg.vocab, cfg.hidden, cfg.layers, cfg.experts, cfg.top_k, cfg.intermediate)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, foreach=True)  # one op per step, not per tensor
    rng = np.random.default_rng([seed, 1])
    model.train()
    for _ in range(train_steps):
        tokens = torch.from_numpy(data.sample(rng, cfg.batch, cfg.seq_len + 1))
        logits = model(tokens[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, cfg.vocab), tokens[:, 1:].reshape(-1))
        loss = loss + cfg.aux_coef * model.aux_loss()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return model.eval()


def record_tiny_model(out_path: str | Path, steps: int = 16, tokens_per_step: int = 256, num_sources: int = 4,
                      seed: int = 0, train_steps: int = 200, cfg: TinyConfig | None = None,
                      source_kind: str = "device", model_yaml: str | Path | None = None) -> Recorded:
    """Train the tiny model, run `steps` forward passes of `tokens_per_step` tokens and write the trace.

    Each step is a batch of sequences of cfg.seq_len tokens (the last one cut short if needed);
    a token's source is its sequence's index in the step mod num_sources. The model spec goes to
    `model_yaml` (default: next to the trace, `<stem>.model.yaml`). Same seed, same trace."""
    torch = _require_torch()
    cfg = cfg or TinyConfig()
    if steps < 1 or tokens_per_step < 1 or num_sources < 1:
        raise MoesimError(f"steps, tokens and sources must be >= 1 (got {steps}, {tokens_per_step}, {num_sources})")
    out_path = Path(out_path)
    model_yaml = Path(model_yaml) if model_yaml else out_path.with_name(out_path.stem + ".model.yaml")
    spec = tiny_model_spec(cfg)

    data = TopicMarkovData(cfg.vocab, cfg.topics, seed)
    with torch.random.fork_rng(devices=[]), _one_thread(torch):  # leave the caller's RNG as it was
        model = train_tiny_model(cfg, data, train_steps, seed)

    meta = TraceMeta(num_moe_layers=cfg.layers, num_experts=cfg.experts, top_k=cfg.top_k, num_sources=num_sources,
                     source_kind=source_kind, model=cfg.name, has_weights=True,  # type: ignore[arg-type]
                     note=(f"recorded from TinyMoEModel forward passes (moesim.kernels.record_routing, seed={seed}, "
                           f"{train_steps} training steps, synthetic {cfg.topics}-topic Markov text, "
                           f"{cfg.seq_len}-token sequences)"))
    n_seq = -(-tokens_per_step // cfg.seq_len)
    source = (np.arange(n_seq * cfg.seq_len) // cfg.seq_len % num_sources)[:tokens_per_step]
    rng = np.random.default_rng([seed, 2])
    per_layer: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def keep(layer: int, ids, weights) -> None:
        per_layer[layer] = (ids[:tokens_per_step].numpy(), weights[:tokens_per_step].float().numpy())

    handle = model.add_routing_callback(keep)
    try:
        with TraceWriter(out_path, meta) as writer, torch.no_grad(), _one_thread(torch):
            for step in range(steps):
                per_layer.clear()
                model(torch.from_numpy(data.sample(rng, n_seq, cfg.seq_len)))
                writer.write_step(_step_rows(step, per_layer, source))
    finally:
        handle.remove()
    model_yaml.parent.mkdir(parents=True, exist_ok=True)
    model_yaml.write_text(yaml.safe_dump(spec, sort_keys=False))
    return Recorded(out_path, model_yaml)


def _step_rows(step: int, per_layer: dict[int, tuple[np.ndarray, np.ndarray]], source: np.ndarray) -> StepRows:
    """Rows of one step from per-MoE-layer (tokens, k) ids and weights, tokens numbered 0..n-1."""
    layers = len(per_layer)
    n = source.size
    return StepRows(step=step, token=np.tile(np.arange(n), layers), source=np.tile(source, layers),
                    layer=np.repeat(np.arange(layers), n),
                    experts=np.concatenate([per_layer[i][0] for i in range(layers)]),
                    weights=np.concatenate([per_layer[i][1] for i in range(layers)]))


def expert_load_skew(trace_path: str | Path, model: ModelSpec) -> np.ndarray:
    """Per MoE layer, max/mean expert load over the whole trace (1.0 = perfectly even)."""
    from moesim.workloads.trace_reader import open_trace

    trace = open_trace(trace_path, model)
    m = trace.meta
    load = np.zeros((m.num_moe_layers, m.num_experts))
    for rows in trace.steps():
        load += rows.counts(m.num_moe_layers, m.num_sources, m.num_experts).sum(axis=1)
    return load.max(axis=1) / load.mean(axis=1)


# --- a local Hugging Face checkpoint ----------------------------------------------------------

# router modules: Mixtral `layers.N.block_sparse_moe.gate`; Qwen-MoE, OLMoE, DeepSeek `layers.N.mlp.gate`;
# Llama-4 / GPT-OSS style `feed_forward.router` / `mlp.router`. Anchored at the end, so Qwen's
# `mlp.shared_expert_gate` and the dense `mlp.gate_proj` do not match.
GATE_PATTERN = r"(?:^|\.)layers\.(\d+)\.(?:block_sparse_moe|mlp|feed_forward|moe)\.(?:gate|router)$"


def find_gate_modules(model, pattern: str = GATE_PATTERN) -> list[tuple[int, str, object]]:
    """(layer number, module name, module) of every router gate, in layer order."""
    regex = re.compile(pattern)
    found = []
    for name, module in model.named_modules():
        match = regex.search(name)
        if match:
            found.append((int(match.group(1)), name, module))
    return sorted(found, key=lambda item: item[0])


def _logits_of(output, num_experts: int):
    """The router logits in a gate module's output: the output itself, or the first floating tensor
    of a tuple whose last axis has num_experts entries (newer routers return (logits, ...))."""
    torch = _require_torch()
    candidates = output if isinstance(output, (tuple, list)) else (output,)
    for item in candidates:
        if isinstance(item, torch.Tensor) and item.is_floating_point() and item.shape[-1] == num_experts:
            return item.detach().float().reshape(-1, num_experts).cpu().numpy()
    return None


def record_hf_checkpoint(checkpoint_dir: str | Path, out_path: str | Path, inputs: Sequence[str] | Sequence[Sequence[int]],
                         sequences_per_step: int = 1, max_tokens: int | None = None, max_steps: int | None = None,
                         gate_pattern: str = GATE_PATTERN) -> Recorded:
    """Run each input (a text, or a list of token ids) through a local HF MoE checkpoint and record
    top-k of every router's logits (softmax probabilities as gate weights).

    Each step holds `sequences_per_step` sequences; a token's source is its sequence's index in the
    step (source_kind "request"). Routers with extra terms (DeepSeek-V3's score bias and group limit)
    are recorded as plain top-k of their logits, which can differ from the experts the model used."""
    torch = _require_torch()
    try:
        import transformers
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError:
        raise MoesimError("recording from a Hugging Face checkpoint needs transformers: pip install transformers") \
            from None
    from moesim.workloads.models import load_model
    from moesim.workloads.trace_loaders import logits_to_topk

    checkpoint_dir, out_path = Path(checkpoint_dir), Path(out_path)
    config = checkpoint_dir / "config.json"
    if not config.is_file():
        raise MoesimError(f"{checkpoint_dir} is not a Hugging Face checkpoint directory (no config.json)")
    if not inputs:
        raise MoesimError("no inputs to run through the checkpoint (give texts or token-id lists)")
    if sequences_per_step < 1:
        raise MoesimError(f"sequences_per_step must be >= 1, got {sequences_per_step}")
    spec = load_model(config)
    num_experts, top_k, layers = spec.moe.num_experts, spec.moe.top_k, len(spec.moe_layers)

    if isinstance(inputs[0], str):
        tokenizer = AutoTokenizer.from_pretrained(checkpoint_dir, local_files_only=True)
        sequences = [tokenizer(text)["input_ids"] for text in inputs]
    else:
        sequences = [list(map(int, seq)) for seq in inputs]
    sequences = [seq[:max_tokens] if max_tokens else seq for seq in sequences]
    if any(len(seq) == 0 for seq in sequences):
        raise MoesimError("an input has no tokens")

    major, minor = (int(part) for part in transformers.__version__.split(".")[:2])
    dtype_kw = "dtype" if (major, minor) >= (4, 56) else "torch_dtype"  # renamed in transformers 4.56
    model = AutoModelForCausalLM.from_pretrained(checkpoint_dir, local_files_only=True, **{dtype_kw: "auto"})
    model.eval()
    gates = find_gate_modules(model, gate_pattern)
    if len(gates) != layers:
        names = ", ".join(name for _, name, _ in gates[:4]) or "none"
        raise MoesimError(f"found {len(gates)} router modules matching {gate_pattern!r} ({names}) but "
                          f"{spec.name} has {layers} MoE layers; pass a gate_pattern that matches its routers")

    captured: dict[int, np.ndarray] = {}
    handles = []
    for index, (_, name, module) in enumerate(gates):
        def hook(_module, _inputs, output, index: int = index, name: str = name) -> None:
            logits = _logits_of(output, num_experts)
            if logits is None:
                raise MoesimError(f"router {name} returned no ({num_experts}-expert) logits; cannot record it")
            captured[index] = logits
        handles.append(module.register_forward_hook(hook))

    meta = TraceMeta(num_moe_layers=layers, num_experts=num_experts, top_k=top_k, num_sources=sequences_per_step,
                     source_kind="request", model=spec.name, has_weights=True,
                     note=f"recorded from Hugging Face checkpoint {checkpoint_dir.name} router logits (top-k by value)")
    device = next(model.parameters()).device
    try:
        with TraceWriter(out_path, meta) as writer, torch.no_grad():
            for step, start in enumerate(range(0, len(sequences), sequences_per_step)):
                if max_steps is not None and step >= max_steps:
                    break
                ids_per_layer: list[list[np.ndarray]] = [[] for _ in range(layers)]
                weights_per_layer: list[list[np.ndarray]] = [[] for _ in range(layers)]
                sources = []
                for request, seq in enumerate(sequences[start:start + sequences_per_step]):
                    captured.clear()
                    model(input_ids=torch.tensor([seq], device=device))
                    for layer in range(layers):
                        ids, weights = logits_to_topk(captured[layer], top_k)
                        ids_per_layer[layer].append(ids)
                        weights_per_layer[layer].append(weights.astype(np.float32))
                    sources.append(np.full(len(seq), request))
                per_layer = {layer: (np.concatenate(ids_per_layer[layer]), np.concatenate(weights_per_layer[layer]))
                             for layer in range(layers)}
                writer.write_step(_step_rows(step, per_layer, np.concatenate(sources)))
    finally:
        for handle in handles:
            handle.remove()
    return Recorded(out_path, config)


# --- CLI --------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m moesim.kernels.record_routing",
                                     description="Record real MoE routing from torch forward passes as a moesim trace.")
    parser.add_argument("--checkpoint", metavar="DIR", help="local Hugging Face MoE checkpoint (default: train and "
                        "record the tiny built-in model)")
    parser.add_argument("--out", default="routing-trace.parquet", help="trace path (default %(default)s)")
    parser.add_argument("--steps", type=int, help="steps to record (tiny default 16; checkpoint: all inputs)")
    parser.add_argument("--tokens", type=int, help="tokens per step (tiny default 256); with --checkpoint, the "
                        "most tokens kept per input")
    parser.add_argument("--sources", type=int, help="devices the sequences are spread over (tiny default 4); with "
                        "--checkpoint, sequences per step (default 1)")
    parser.add_argument("--seed", type=int, default=0, help="tiny model: data and init seed (default %(default)s)")
    parser.add_argument("--train-steps", type=int, default=200, help="tiny model: Adam steps (default %(default)s)")
    parser.add_argument("--text", action="append", default=[], help="checkpoint: an input text (repeatable)")
    parser.add_argument("--text-file", help="checkpoint: a file with one input text per line")
    args = parser.parse_args(argv)
    try:
        if args.checkpoint:
            texts = list(args.text)
            if args.text_file:
                texts += [line for line in Path(args.text_file).read_text().splitlines() if line.strip()]
            if not texts:
                raise MoesimError("--checkpoint needs inputs: --text TEXT (repeatable) or --text-file FILE")
            rec = record_hf_checkpoint(args.checkpoint, args.out, texts, sequences_per_step=args.sources or 1,
                                       max_tokens=args.tokens, max_steps=args.steps)
            print(f"wrote trace {rec.trace}")
            print(f"model: {rec.model} (pass it as the trace's model)")
            return 0
        from moesim.workloads.models import load_model

        rec = record_tiny_model(args.out, steps=args.steps or 16, tokens_per_step=args.tokens or 256,
                                num_sources=args.sources or 4, seed=args.seed, train_steps=args.train_steps)
        skew = expert_load_skew(rec.trace, load_model(rec.model))
        print(f"wrote trace {rec.trace}")
        print(f"wrote model YAML {rec.model}")
        print("expert load max/mean per MoE layer: " + ", ".join(f"{s:.2f}" for s in skew))
        return 0
    except (MoesimError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
