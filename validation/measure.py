"""What a calibration measures, and measuring it with torch on the CPU or a CUDA GPU.

The grid (`calibration_grid`): dense GEMMs over token counts x expert-like shapes, grouped
GEMMs with skewed tokens per expert (Zipf, empty experts included), memory copies over sizes
(host<->device both ways on a GPU), and whole MoE layers. Weights and copy sources rotate
through enough copies to defeat the caches, as expert weights arrive cold in inference. Every spec carries its split: `fit`,
`holdout_random` (a random share of the base grid), `holdout_slice` (token counts above the fit
range and shapes of another model, never seen by the fit) and `e2e` (MoE layers, predicted by
composing fitted op costs). FLOPs and bytes follow the simulator's own conventions (ops.py):
a GEMM reads its weights once and its input and output activations once.

`model_grid` builds the grid from model specs instead: every GEMM shape of each model (experts
with gate+up fused, attention projections, dense FFN, shared experts, router), grouped GEMMs with
Zipf-skewed top-k routing at the model's expert count, and the model's whole MoE layers; the
default GPU grid (`--size full`) is model-shaped with Mixtral-8x7B and DeepSeek-V3, since
CPU-sized shapes on a GPU time the launch floor, not the kernels.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import numpy as np

from moesim.validation.timing import Timing, time_op

if TYPE_CHECKING:
    from moesim.workloads.model_spec import ModelSpec

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2, "float8_e4m3fn": 1}
FP8_KINDS = ("gemm", "grouped_gemm", "copy", "h2d", "d2h")  # what an fp8 calibration measures (validation/fp8_ops)


@dataclass(frozen=True)
class OpSpec:
    kind: str  # gemm | grouped_gemm | grouped_gemm_triton | copy | h2d | d2h | moe_layer | fused_moe
    split: str  # fit | holdout_random | holdout_slice | e2e
    m: int = 0  # GEMM rows (tokens); total tokens for grouped / MoE layers
    k: int = 0
    n: int = 0
    counts: tuple[int, ...] = ()  # tokens per expert (grouped GEMM)
    nbytes: int = 0  # copies
    experts: int = 0  # MoE layer
    top_k: int = 0
    shape: str = ""  # which model's shapes

    def flops_bytes(self, elem: int) -> tuple[float, float]:
        """FLOPs and bytes as the simulator counts them."""
        if self.kind == "gemm":
            return 2.0 * self.m * self.k * self.n, float((self.m * self.k + self.k * self.n + self.m * self.n) * elem)
        if self.kind in ("grouped_gemm", "grouped_gemm_triton"):
            live = [c for c in self.counts if c > 0]
            return (2.0 * sum(live) * self.k * self.n,
                    float(sum((c * self.k + self.k * self.n + c * self.n) * elem for c in live)))
        if self.kind == "fused_moe":  # gate, up and down of every live expert (the engine's expert op)
            live = [c for c in self.counts if c > 0]
            return (6.0 * sum(live) * self.k * self.n,
                    float(sum((3 * self.k * self.n + c * (2 * self.k + 3 * self.n)) * elem for c in live)))
        if self.kind in ("copy", "h2d", "d2h"):
            return 0.0, float(self.nbytes * (2 if self.kind == "copy" else 1))  # a device copy reads and writes
        return 0.0, 0.0


@dataclass
class GridConfig:
    """How big a calibration is: the CI-sized `small` or the benchmark's `full`."""

    tokens: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64, 128, 256)
    slice_tokens: tuple[int, ...] = (512, 1024)
    shapes: tuple[tuple[int, int], ...] = ((512, 1024), (1024, 512), (1024, 1024))  # (k, n): expert-like
    other_shapes: tuple[tuple[int, int], ...] = ((768, 1536),)  # another model's shapes (held out)
    copy_bytes: tuple[int, ...] = tuple(2 ** p for p in range(16, 27, 2))
    grouped: tuple[tuple[int, int, int], ...] = ((8, 64, 1), (16, 256, 2))  # (experts, tokens, seed)
    moe_layers: tuple[tuple[int, int, int, int, int], ...] = ((64, 512, 1024, 8, 2), (256, 512, 1024, 8, 2))
    holdout_share: float = 0.25
    seed: int = 0
    shape_names: tuple[str, ...] = ()  # labels of `shapes` (default "A"), e.g. "Mixtral-8x7B:expert_down"
    other_shape_names: tuple[str, ...] = ()  # labels of `other_shapes` (default "B")
    extra: tuple[OpSpec, ...] = ()  # explicit specs (model grids): `fit` ones join the random hold-out
    timing: dict = field(default_factory=lambda: {"warmup": 3, "min_reps": 5, "min_time": 0.05})


SMALL = GridConfig(tokens=(1, 2, 4, 8, 16, 32, 64, 128), slice_tokens=(512,), shapes=((256, 512), (512, 256)),
                   other_shapes=((384, 768),), copy_bytes=tuple(2 ** p for p in range(16, 27, 2)),
                   grouped=((8, 64, 1),), moe_layers=((32, 256, 512, 8, 2),),
                   timing={"warmup": 2, "min_reps": 5, "min_time": 0.02})
FULL = GridConfig(tokens=(1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512),
                  slice_tokens=(1024, 2048, 4096),
                  shapes=((1024, 2048), (2048, 1024), (1024, 1024), (2048, 2048)),
                  other_shapes=((1536, 3072), (3072, 1536)),
                  copy_bytes=tuple(2 ** p for p in range(14, 29)),
                  grouped=((8, 64, 1), (8, 512, 2), (32, 256, 3), (64, 1024, 4)),
                  moe_layers=((64, 1024, 2048, 8, 2), (256, 1024, 2048, 8, 2), (512, 1024, 2048, 32, 4)),
                  timing={"warmup": 5, "min_reps": 10, "min_time": 0.1})


def zipf_counts(experts: int, tokens: int, seed: int, alpha: float = 1.2) -> tuple[int, ...]:
    """Skewed tokens per expert (some experts get none), like real routing."""
    rng = np.random.default_rng(seed)
    p = 1.0 / np.arange(1, experts + 1) ** alpha
    counts = rng.multinomial(tokens, p / p.sum())
    return tuple(int(c) for c in rng.permutation(counts))


def calibration_grid(cfg: GridConfig, device: str) -> list[OpSpec]:
    rng = np.random.default_rng(cfg.seed)
    base: list[OpSpec] = []
    names = cfg.shape_names or ("A",) * len(cfg.shapes)
    other_names = cfg.other_shape_names or ("B",) * len(cfg.other_shapes)
    for (k, n), name in zip(cfg.shapes, names):
        for m in cfg.tokens:
            base.append(OpSpec("gemm", "fit", m=m, k=k, n=n, shape=name))
    for e, t, seed in cfg.grouped:
        k, n = cfg.shapes[0]
        base.append(OpSpec("grouped_gemm", "fit", m=t, k=k, n=n, counts=zipf_counts(e, t, seed), shape="A"))
    copies = ("h2d", "d2h", "copy") if device == "cuda" else ("copy",)
    for kind in copies:
        for b in cfg.copy_bytes:
            base.append(OpSpec(kind, "fit", nbytes=b))
    base += [s for s in cfg.extra if s.split == "fit"]
    held = np.zeros(len(base), dtype=bool)  # a random share of each kind, leaving at least 3 to fit
    for kind in dict.fromkeys(s.kind for s in base):
        idx = np.flatnonzero([s.kind == kind for s in base])
        take = min(int(round(cfg.holdout_share * len(idx))), max(len(idx) - 3, 0))
        held[rng.choice(idx, size=take, replace=False)] = True
    specs = [replace(s, split="holdout_random") if h else s for s, h in zip(base, held)]
    for (k, n), name in zip(cfg.shapes, names):
        for m in cfg.slice_tokens:
            specs.append(OpSpec("gemm", "holdout_slice", m=m, k=k, n=n, shape=name))
    for (k, n), name in zip(cfg.other_shapes, other_names):
        for m in cfg.tokens + cfg.slice_tokens:
            specs.append(OpSpec("gemm", "holdout_slice", m=m, k=k, n=n, shape=name))
    specs += [s for s in cfg.extra if s.split != "fit"]
    for tokens, hidden, inter, experts, top_k in cfg.moe_layers:
        specs.append(OpSpec("moe_layer", "e2e", m=tokens, k=hidden, n=inter, experts=experts, top_k=top_k))
    if device == "cuda":  # the one-launch Triton grouped GEMM, predicted as the per-expert GEMMs the engine costs
        for e, t, seed in cfg.grouped:
            k, n = cfg.shapes[0]
            specs.append(OpSpec("grouped_gemm_triton", "e2e", m=t, k=k, n=n, counts=zipf_counts(e, t, seed),
                                shape="A"))
    return specs


MODEL_TOKENS = (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512)  # fit token counts (log grid)
DEFAULT_GPU_MODELS = ("Mixtral-8x7B", "DeepSeek-V3")


def routed_counts(experts: int, tokens: int, top_k: int, seed: int, alpha: float = 1.0) -> tuple[int, ...]:
    """Tokens per expert when each of `tokens` tokens picks `top_k` distinct experts with Zipf(alpha)
    preferences (Gumbel top-k sampling; expert order shuffled): sums to tokens x top_k, no expert above
    `tokens`, hot experts and empty ones as in real routing."""
    rng = np.random.default_rng(seed)
    logp = -alpha * np.log(np.arange(1, experts + 1))
    counts = np.zeros(experts, dtype=np.int64)
    for lo in range(0, tokens, 4096):  # chunks bound the memory of (tokens, experts) keys
        rows = min(4096, tokens - lo)
        keys = logp + rng.gumbel(size=(rows, experts))
        picks = np.argpartition(-keys, top_k - 1, axis=1)[:, :top_k]
        counts += np.bincount(picks.ravel(), minlength=experts)
    return tuple(int(c) for c in rng.permutation(counts))


def model_gemm_shapes(model: ModelSpec) -> dict[str, tuple[int, int]]:
    """(k, n) of every GEMM in one layer of `model` on one device (tp 1), as simulator/ops.py costs them:
    routed expert gate+up (fused: 2x width when SwiGLU) and down, shared experts (fused), the dense FFN
    where the model has dense layers, the attention projections (GQA qkv fused and o; MLA q/kv down and
    up and o) and the router. Shapes repeated under another name are kept once (first name)."""
    from moesim.workloads.model_spec import GQAAttention

    h, moe, att = model.hidden_size, model.moe, model.attention
    glu = 2 if model.activation == "swiglu" else 1
    out: dict[str, tuple[int, int]] = {
        "expert_gate_up": (h, glu * moe.expert_intermediate_size),
        "expert_down": (moe.expert_intermediate_size, h)}
    if moe.num_shared_experts:
        width = moe.num_shared_experts * model.shared_size
        out["shared_gate_up"], out["shared_down"] = (h, glu * width), (width, h)
    if moe.first_dense_layers or moe.layer_freq > 1:
        out["dense_gate_up"] = (h, glu * model.dense_intermediate_size)
        out["dense_down"] = (model.dense_intermediate_size, h)
    if isinstance(att, GQAAttention):
        out["qkv_proj"] = (h, (att.num_heads + 2 * att.num_kv_heads) * att.head_dim)
        out["o_proj"] = (att.num_heads * att.head_dim, h)
    else:
        qk = att.qk_nope_head_dim + att.qk_rope_head_dim
        if att.q_lora_rank:
            out["q_down"], out["q_up"] = (h, att.q_lora_rank), (att.q_lora_rank, att.num_heads * qk)
        else:
            out["q_proj"] = (h, att.num_heads * qk)
        out["kv_down"] = (h, att.kv_lora_rank + att.qk_rope_head_dim)
        out["kv_up"] = (att.kv_lora_rank, att.num_heads * (att.qk_nope_head_dim + att.v_head_dim))
        out["o_proj"] = (att.num_heads * att.v_head_dim, h)
    out["router"] = (h, moe.num_experts)
    seen: set[tuple[int, int]] = set()
    return {name: kn for name, kn in out.items() if not (kn in seen or seen.add(kn))}


def model_grid(models: list[ModelSpec], device: str, dtype: str, max_tokens: int = 8192,
               holdout: tuple[str, ...] = ("o_proj",), layer_budget_bytes: float = 32 * 2 ** 30,
               alpha: float = 0.5) -> GridConfig:
    """A calibration grid shaped like `models` (ModelSpec or bundled names).

    Splits: GEMMs of every model shape over the log token grid up to min(512, max_tokens / 2) train
    (a random share held out); the same shapes at powers of two above that, up to `max_tokens`, and
    the shapes named in `holdout` (each model's attention output projection) at all token counts form
    the held-out slice. Grouped GEMMs (expert gate+up and down, Zipf-skewed top-k counts at the model's
    expert count; Zipf `alpha` 0.5 puts the hottest expert at ~1.7x the mean load with 8 experts and
    ~7x with 256) train at 16/128/512 tokens and are held out above; whole MoE layers at 16/512/4096
    tokens are end-to-end checks (experts halved until their weights fit `layer_budget_bytes`). On a
    GPU, host<->device copies and the one-launch Triton grouped GEMM join as in the default grid."""
    from moesim.workloads.models import load_model

    models = [load_model(m) if isinstance(m, str) else m for m in models]
    if not models:
        raise ValueError("model_grid needs at least one model")
    elem = DTYPE_BYTES[dtype]
    fit_max = min(512, max_tokens // 2)
    train = tuple(t for t in MODEL_TOKENS if t <= fit_max)
    above = tuple(2 ** p for p in range(1, 31) if fit_max < 2 ** p <= max_tokens)
    shapes: dict[tuple[int, int], str] = {}
    held: dict[tuple[int, int], str] = {}
    extra: list[OpSpec] = []
    for i, model in enumerate(models):
        named = model_gemm_shapes(model)
        for name, kn in named.items():
            if kn in shapes or kn in held:
                continue
            (held if name in holdout else shapes)[kn] = f"{model.name}:{name}"
        moe = model.moe
        seed = 100 * (i + 1)
        for t in (16, 128, 512, 2048, 8192):
            if t > max_tokens:
                continue
            split = "fit" if t <= fit_max else "holdout_slice"
            counts = routed_counts(moe.num_experts, t, moe.top_k, seed + t, alpha)
            for name in ("expert_gate_up", "expert_down"):
                k, n = named[name]
                spec = OpSpec("grouped_gemm", split, m=t, k=k, n=n, counts=counts, experts=moe.num_experts,
                              top_k=moe.top_k, shape=f"{model.name}:{name}")
                extra.append(spec)
                if device == "cuda" and split == "fit":  # predicted as the per-expert GEMMs the engine costs
                    extra.append(replace(spec, kind="grouped_gemm_triton", split="e2e"))
        experts = moe.num_experts
        while experts > 1 and 3 * experts * model.hidden_size * moe.expert_intermediate_size * elem > layer_budget_bytes:
            experts //= 2
        if device == "cuda":
            extra += fused_layer_specs(model, experts, max_tokens, fit_max, seed)
        for t in (16, 512, 4096):
            if t <= max_tokens:
                extra.append(OpSpec("moe_layer", "e2e", m=t, k=model.hidden_size, n=moe.expert_intermediate_size,
                                    experts=experts, top_k=min(moe.top_k, experts), shape=model.name))
    return GridConfig(tokens=train, slice_tokens=above, shapes=tuple(shapes), shape_names=tuple(shapes.values()),
                      other_shapes=tuple(held), other_shape_names=tuple(held.values()),
                      copy_bytes=FULL.copy_bytes, grouped=(), moe_layers=(), extra=tuple(extra),
                      timing={"warmup": 5, "min_reps": 10, "min_time": 0.1})


FUSED_TOKENS = (1, 4, 16, 64, 256, 512, 1024, 2048, 4096, 8192)


def fused_layer_specs(model: ModelSpec, experts: int, max_tokens: int, fit_max: int, seed: int,
                      alpha: float = 0.5) -> list[OpSpec]:
    """Fused MoE layers (kernels/triton_fused_moe.py) of a model: all `experts` on one device at
    the model's top-k, and, for models with 64+ experts, an EP8 device's slice (its experts' rows
    only, as a dispatch delivers them). Token counts up to `fit_max` fit (a random share held
    out), above are the held-out slice."""
    moe = model.moe
    out: list[OpSpec] = []
    h, inter = model.hidden_size, moe.expert_intermediate_size
    for t in FUSED_TOKENS:
        if t > max_tokens:
            continue
        split = "fit" if t <= fit_max else "holdout_slice"
        counts = routed_counts(experts, t, min(moe.top_k, experts), seed + 7 * t, alpha)
        out.append(OpSpec("fused_moe", split, m=t, k=h, n=inter, counts=counts, experts=experts,
                          top_k=min(moe.top_k, experts), shape=f"{model.name}:fused"))
        if experts >= 64:
            local = counts[:experts // 8]
            if sum(local):
                out.append(OpSpec("fused_moe", split, m=sum(local), k=h, n=inter, counts=local,
                                  experts=len(local), top_k=1, shape=f"{model.name}:fused_ep8"))
    return out


ROTATE_BYTES = 256 * 2 ** 20  # weights cycle through this many bytes of copies: no rep finds them in cache


def rotate_bytes(device: str) -> int:
    """Bytes of operand copies to cycle through: 256 MiB, or 4x the GPU's L2 cache where that is more."""
    if device != "cuda":
        return ROTATE_BYTES
    import torch

    l2 = int(getattr(torch.cuda.get_device_properties(0), "L2_cache_size", 0) or 0)
    return max(ROTATE_BYTES, 4 * l2)


def _copies(nbytes: float, pool: int = ROTATE_BYTES) -> int:
    """How many copies of an operand to cycle through so that reps read it from memory, not cache
    (in MoE inference each expert's weights arrive cold: other experts ran in between)."""
    return int(max(1, min(64, np.ceil(pool / max(nbytes, 1.0)))))


def _runner(spec: OpSpec, device: str, dtype) -> Callable[[], object]:
    """A zero-argument closure that runs the op once on prepared tensors (weights rotate, see _copies)."""
    import itertools

    import torch

    gen = torch.Generator(device="cpu").manual_seed(0)
    elem = torch.empty((), dtype=dtype).element_size()
    pool = rotate_bytes(device)

    def rand(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float32).to(device=device, dtype=dtype)

    def weights(*shape):
        """A cycle of copies of a weight tensor (filled with a constant: values do not change timing)."""
        count = _copies(float(np.prod(shape)) * elem, pool)
        return itertools.cycle([torch.full(shape, 0.01, device=device, dtype=dtype) for _ in range(count)])

    if dtype == torch.float8_e4m3fn and spec.kind in ("gemm", "grouped_gemm"):  # scaled matmul, per-tensor scales
        from moesim.validation import fp8_ops

        if spec.kind == "gemm":
            return fp8_ops.gemm_runner(spec.m, spec.k, spec.n, device, _copies(float(spec.k * spec.n), pool))
        return fp8_ops.grouped_runner(spec.counts, spec.k, spec.n, device,
                                      _copies(float(sum(c > 0 for c in spec.counts) * spec.k * spec.n), pool))
    if spec.kind == "gemm":
        a, bs = rand(spec.m, spec.k), weights(spec.k, spec.n)
        return lambda: torch.matmul(a, next(bs))
    if spec.kind == "grouped_gemm_triton":
        from moesim.kernels.triton_grouped_gemm import grouped_gemm_triton

        x, w = rand(sum(spec.counts), spec.k), rand(len(spec.counts), spec.k, spec.n)
        counts = torch.tensor(spec.counts, dtype=torch.int64)
        return lambda: grouped_gemm_triton(x, counts, w)
    if spec.kind == "grouped_gemm":
        live = [c for c in spec.counts if c > 0]
        xs = [rand(c, spec.k) for c in live]
        sets = weights(len(live), spec.k, spec.n)
        return lambda: [torch.matmul(x, w) for x, w in zip(xs, next(sets))]
    if spec.kind in ("copy", "h2d", "d2h"):
        elems = spec.nbytes // DTYPE_BYTES["float32"]
        if spec.kind == "copy":
            srcs = itertools.cycle([torch.zeros(elems, device=device) for _ in range(_copies(spec.nbytes, pool))])
            dst = torch.empty(elems, device=device)
            return lambda: dst.copy_(next(srcs))
        if spec.kind == "h2d":
            src, dst = torch.empty(elems, pin_memory=True), torch.empty(elems, device=device)
        else:
            src, dst = torch.empty(elems, device=device), torch.empty(elems, pin_memory=True)
        return lambda: dst.copy_(src, non_blocking=True)
    if spec.kind == "fused_moe":  # a device's MoE layer as serving kernels run it: align, gate+up, down, reduce
        from moesim.kernels.triton_fused_moe import fused_moe

        top_k = max(spec.top_k, 1)
        rows = sum(spec.counts)
        flat = torch.repeat_interleave(torch.arange(len(spec.counts)), torch.tensor(spec.counts, dtype=torch.int64))
        ids = flat[torch.randperm(rows, generator=gen)].reshape(rows // top_k, top_k).to(device)
        gate_w = torch.full(ids.shape, 1.0 / top_k, device=device, dtype=dtype)
        x = rand(rows // top_k, spec.k)
        e = len(spec.counts)
        sets = itertools.cycle([(torch.full((e, spec.k, spec.n), 0.01, device=device, dtype=dtype),
                                 torch.full((e, spec.k, spec.n), 0.01, device=device, dtype=dtype),
                                 torch.full((e, spec.n, spec.k), 0.01, device=device, dtype=dtype))
                                for _ in range(_copies(3.0 * e * spec.k * spec.n * elem, pool))])
        return lambda: fused_moe(x, ids, gate_w, *next(sets))
    if spec.kind == "moe_layer":
        from moesim.kernels.grouped_moe import GroupedMoE

        torch.manual_seed(0)
        layer = GroupedMoE(spec.k, spec.n, spec.experts, spec.top_k).to(device=device, dtype=dtype).eval()
        x = rand(spec.m, spec.k)

        def run():
            with torch.no_grad():
                return layer(x)
        return run
    raise ValueError(f"unknown op kind '{spec.kind}'")


def moe_layer_counts(spec: OpSpec, device: str, dtype) -> tuple[int, ...]:
    """Tokens per expert the measured MoE layer routes (same seed and input as its runner)."""
    import torch

    from moesim.kernels.grouped_moe import GroupedMoE

    gen = torch.Generator(device="cpu").manual_seed(0)
    torch.manual_seed(0)
    layer = GroupedMoE(spec.k, spec.n, spec.experts, spec.top_k).to(device=device, dtype=dtype).eval()
    x = torch.randn(spec.m, spec.k, generator=gen, dtype=torch.float32).to(device=device, dtype=dtype)
    with torch.no_grad():
        ids = layer.router(x).ids
    return tuple(int(c) for c in torch.bincount(ids.flatten().cpu(), minlength=spec.experts))


NO_GRAPH = {"moe_layer", "grouped_gemm_triton", "h2d", "d2h"}  # synchronise with the host: no CUDA graph


def measure(specs: list[OpSpec], device: str, dtype: str, timing: dict,
            progress: Callable[[str], None] | None = None) -> Iterator[tuple[OpSpec, Timing]]:
    """Time every spec on `device`; yields (spec, timing) as it goes."""
    import torch

    tdtype = getattr(torch, dtype)
    for spec in specs:
        if progress:
            progress(f"{spec.kind} {spec.m}x{spec.k}x{spec.n}" if spec.k else f"{spec.kind} {spec.nbytes} B")
        fn = _runner(spec, device, tdtype)
        if spec.kind == "moe_layer":
            spec = replace(spec, counts=moe_layer_counts(spec, device, tdtype))
        graph = spec.kind not in NO_GRAPH
        yield spec, time_op(fn, device, **({"graph": graph} | timing))
        del fn
