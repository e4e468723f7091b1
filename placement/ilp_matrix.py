"""One layer's placement MILP built as sparse matrices and solved by HiGHS directly (no PuLP).

The same model as `ilp.solve_layer` builds with PuLP (variables, rows, objective, warm start,
time limit, gap), generalised to S load scenarios that share one placement:

    columns  x[e,d] (binary; continuous when relaxed), f[e,d] in [0, 1], t[s] >= 0, z >= 0 (S > 1, lam > 0)
    minimise (1 - lam) * mean_s t[s] + lam * z + w * sum_{e,d} cost[e,d] * f[e,d]     (S = 1: t[0] + traffic)
    rows     sum_d f[e,d] = 1;  f[e,d] - x[e,d] <= 0;  sum_e x[e,d] <= slots[d];  sum x <= budget
             sum_e fixed*[load[s,e] > 0]*x[e,d] + per_token*load[s,e]*f[e,d] - t[s] <= 0   every (s, d)
             the same without t[s] <= cap                                                  (two-phase cap)
             t[s] - z <= 0                                                                 every s

Why: PuLP builds each model one Python object per variable and term; at 256 experts x 64 devices
that costs seconds per layer, more than HiGHS spends solving. Here every block is a numpy array
and the model goes to HiGHS in one `passModel`. PuLP stays the path for CBC.
"""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import numpy as np

from moesim import interrupts
from moesim.placement.problem import ExpertTimeModel


@dataclass(frozen=True)
class LayerMatrices:
    """A layer MILP in HiGHS's row-wise form plus where each variable block starts."""

    col_cost: np.ndarray
    col_lower: np.ndarray
    col_upper: np.ndarray
    integer: np.ndarray  # (n,) bool
    row_lower: np.ndarray
    row_upper: np.ndarray
    start: np.ndarray  # CSR row starts (m + 1,)
    index: np.ndarray
    value: np.ndarray
    num_experts: int
    num_devices: int
    num_scenarios: int
    has_z: bool

    @property
    def num_cols(self) -> int:
        return self.col_cost.size

    @property
    def num_rows(self) -> int:
        return self.row_lower.size

    def x_cols(self) -> slice:
        n = self.num_experts * self.num_devices
        return slice(0, n)

    def f_cols(self) -> slice:
        n = self.num_experts * self.num_devices
        return slice(n, 2 * n)

    def t_cols(self) -> slice:
        n = 2 * self.num_experts * self.num_devices
        return slice(n, n + self.num_scenarios)


def as_scenarios(load: np.ndarray) -> np.ndarray:
    """(E,) or (S, E) loads as (S, E)."""
    load = np.asarray(load, dtype=float)
    return load[None, :] if load.ndim == 1 else load


def _rows_to_csr(rows: np.ndarray, cols: np.ndarray, vals: np.ndarray, num_rows: int
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    order = np.argsort(rows, kind="stable")
    start = np.zeros(num_rows + 1, dtype=np.int32)
    np.cumsum(np.bincount(rows, minlength=num_rows), out=start[1:])
    return start, cols[order].astype(np.int32), vals[order].astype(float)


def build_layer(load: np.ndarray, cost: np.ndarray, slots: np.ndarray, budget: int, tm: ExpertTimeModel,
                weight: float, worst_weight: float = 0.0, max_bottleneck: float | None = None,
                relax: bool = False, t_floor: np.ndarray | None = None,
                fixed_copies: np.ndarray | None = None, copy_cost: np.ndarray | None = None) -> LayerMatrices:
    """The layer MILP (or its LP relaxation) for loads (E,) or scenarios (S, E); see the module doc.

    `t_floor` (S,): lower bounds of the bottleneck variables, the slowest device outside a
    neighbourhood, so a neighbourhood's objective is the whole layer's up to a constant.
    `fixed_copies` (E, D) bool: x fixed to it, only the replica shares move (an LP in effect).
    `copy_cost` (E, D): objective cost of holding a copy of e on d (re-planning: moving it there)."""
    loads = as_scenarios(load)
    S, E = loads.shape
    D = cost.shape[1]
    n_ed = E * D
    has_z = S > 1 and worst_weight > 0
    n = 2 * n_ed + S + int(has_z)
    e_idx, d_idx = np.divmod(np.arange(n_ed), D)  # column e*D + d
    X, F, T = 0, n_ed, 2 * n_ed
    col_cost = np.zeros(n)
    col_cost[F:F + n_ed] = weight * np.asarray(cost, dtype=float).ravel()
    if copy_cost is not None:
        col_cost[X:X + n_ed] = np.asarray(copy_cost, dtype=float).ravel()
    if S == 1:
        col_cost[T] = 1.0
    else:
        col_cost[T:T + S] = (1.0 - worst_weight) / S
        if has_z:
            col_cost[T + S] = worst_weight
    col_lower = np.zeros(n)
    if t_floor is not None:
        col_lower[T:T + S] = np.maximum(np.broadcast_to(np.asarray(t_floor, dtype=float), S), 0.0)
    col_upper = np.concatenate([np.ones(2 * n_ed), np.full(S + int(has_z), np.inf)])
    if fixed_copies is not None:
        col_lower[X:X + n_ed] = col_upper[X:X + n_ed] = np.asarray(fixed_copies, dtype=float).ravel()
    integer = np.zeros(n, dtype=bool)
    integer[X:X + n_ed] = not relax

    rows, cols, vals, lo, hi = [], [], [], [], []
    r = 0

    def block(row: np.ndarray, col: np.ndarray, val: np.ndarray, count: int, low: np.ndarray, high: np.ndarray):
        nonlocal r
        rows.append(row + r)
        cols.append(col)
        vals.append(val)
        lo.append(np.broadcast_to(low, count))
        hi.append(np.broadcast_to(high, count))
        r += count

    ones = np.ones(n_ed)
    block(e_idx, F + np.arange(n_ed), ones, E, 1.0, 1.0)  # serve: sum_d f = 1
    block(np.concatenate([np.arange(n_ed)] * 2), np.concatenate([F + np.arange(n_ed), X + np.arange(n_ed)]),
          np.concatenate([ones, -ones]), n_ed, -np.inf, 0.0)  # copy: f - x <= 0
    block(d_idx, X + np.arange(n_ed), ones, D, -np.inf, np.asarray(slots, dtype=float))  # slots
    for capped in (False, True) if max_bottleneck is not None else (False,):
        for s in range(S):
            active = loads[s] > 0
            fx = tm.fixed * active[e_idx] if tm.fixed else np.zeros(n_ed)
            ff = tm.per_token * loads[s][e_idx] * active[e_idx]
            keep_x, keep_f = fx != 0, ff != 0
            row = [d_idx[keep_x], d_idx[keep_f]]
            col = [X + np.flatnonzero(keep_x), F + np.flatnonzero(keep_f)]
            val = [fx[keep_x], ff[keep_f]]
            if capped:
                block(np.concatenate(row), np.concatenate(col), np.concatenate(val), D, -np.inf, max_bottleneck)
            else:
                row.append(np.arange(D))
                col.append(np.full(D, T + s))
                val.append(-np.ones(D))
                block(np.concatenate(row), np.concatenate(col), np.concatenate(val), D, -np.inf, 0.0)
    block(np.zeros(n_ed, dtype=np.int64), X + np.arange(n_ed), ones, 1, -np.inf, float(budget))  # budget
    if has_z:
        block(np.repeat(np.arange(S), 2), np.ravel(np.column_stack([T + np.arange(S), np.full(S, T + S)])),
              np.tile([1.0, -1.0], S), S, -np.inf, 0.0)  # z >= t[s]
    start, index, value = _rows_to_csr(np.concatenate(rows), np.concatenate(cols), np.concatenate(vals), r)
    return LayerMatrices(col_cost, col_lower, col_upper, integer, np.concatenate(lo).astype(float),
                         np.concatenate(hi).astype(float), start, index, value, E, D, S, has_z)


def warm_vector(m: LayerMatrices, warm: np.ndarray, load: np.ndarray, tm: ExpertTimeModel) -> np.ndarray:
    """Column values of a share matrix (E, D): copies where a share is positive, t[s] its device times."""
    loads = as_scenarios(load)
    held = warm > 1e-9
    col = np.zeros(m.num_cols)
    col[m.x_cols()] = held.ravel()
    col[m.f_cols()] = np.clip(warm, 0.0, 1.0).ravel()
    times = tm.fixed * ((loads > 0).astype(float) @ held) + tm.per_token * loads @ warm  # (S, D)
    col[m.t_cols()] = np.maximum(times.max(axis=1), m.col_lower[m.t_cols()])
    if m.has_z:
        col[-1] = col[m.t_cols()].max()
    return col


@contextmanager
def quiet_stdout(enabled: bool):
    """Silence a native library's stdout (HiGHS prints a banner even with output off)."""
    if not enabled:
        yield
        return
    sys.stdout.flush()
    saved = os.dup(1)
    with open(os.devnull, "w") as null:
        os.dup2(null.fileno(), 1)
        try:
            yield
        finally:
            os.dup2(saved, 1)
            os.close(saved)


def _highs_lp(m: LayerMatrices):
    import highspy

    lp = highspy.HighsLp()
    lp.num_col_, lp.num_row_ = m.num_cols, m.num_rows
    lp.col_cost_, lp.col_lower_, lp.col_upper_ = m.col_cost, m.col_lower, m.col_upper
    lp.row_lower_, lp.row_upper_ = m.row_lower, m.row_upper
    lp.a_matrix_.format_ = highspy.MatrixFormat.kRowwise
    lp.a_matrix_.num_col_, lp.a_matrix_.num_row_ = m.num_cols, m.num_rows
    lp.a_matrix_.start_, lp.a_matrix_.index_, lp.a_matrix_.value_ = m.start, m.index, m.value
    if m.integer.any():
        kinds = np.where(m.integer, int(highspy.HighsVarType.kInteger), int(highspy.HighsVarType.kContinuous))
        lp.integrality_ = [highspy.HighsVarType(int(k)) for k in kinds]
    return lp


def run_interruptibly(h) -> None:
    """`h.run()` in HiGHS's solver thread, so that a signal reaches Python within 0.1 s: the solve
    is cancelled through HiGHS's interrupt callback and the interrupt raised again (highspy's own
    handler would swallow it and return as if the time limit had passed)."""
    if not hasattr(h, "startSolve"):  # highspy before 1.8: no solver thread
        h.run()
        return
    h.HandleUserInterrupt = True
    h.startSolve()
    try:
        while not h.wait(0.1)[0]:
            pass
    except KeyboardInterrupt:
        h.cancelSolve()
        h.wait(5.0)  # the interrupt callback stops it at its next check
        raise


class _TrackedSubprocess:
    """The subprocess module as PuLP's CBC interface sees it, remembering the processes it starts."""

    def __init__(self, real, started: list):
        self._real, self._started = real, started

    def Popen(self, *args, **kwargs):  # noqa: N802 (subprocess's name)
        with interrupts.deferred():  # a signal between the fork and the append would leave CBC untracked
            proc = self._real.Popen(*args, **kwargs)
            self._started.append(proc)
        return proc

    def __getattr__(self, name: str):
        return getattr(self._real, name)


@contextmanager
def cbc_stopped_on_interrupt() -> Iterator[None]:
    """PuLP runs CBC as a child process and waits for it: a signal sent to moesim alone would leave
    CBC running to its time limit, so the solver processes started here are killed on an interrupt."""
    import pulp.apis.coin_api as coin

    started: list = []
    real = coin.subprocess
    coin.subprocess = _TrackedSubprocess(real, started)
    try:
        yield
    except KeyboardInterrupt:
        for proc in started:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        raise
    finally:
        coin.subprocess = real


def run_highs(m: LayerMatrices, warm_cols: np.ndarray | None, *, time_limit: float, gap: float,
              threads: int | None, msg: bool) -> tuple[np.ndarray | None, str, float, float]:
    """Solve; return (column values or None, status, objective, best bound)."""
    import highspy

    with quiet_stdout(not msg):
        h = highspy.Highs()
        h.setOptionValue("output_flag", bool(msg))
        h.setOptionValue("mip_rel_gap", float(gap))
        h.setOptionValue("time_limit", float(time_limit))
        if threads is not None:
            h.setOptionValue("threads", int(threads))
        h.passModel(_highs_lp(m))
        if warm_cols is not None and m.integer.any():
            sol = highspy.HighsSolution()
            sol.col_value = warm_cols
            sol.value_valid = True
            h.setSolution(sol)
        run_interruptibly(h)
    interrupts.check()
    status = h.modelStatusToString(h.getModelStatus())
    info = h.getInfo()
    solution = h.getSolution()
    values = np.asarray(solution.col_value) if solution.value_valid else None
    obj = float(info.objective_function_value) if values is not None else float("nan")
    if m.integer.any():
        bound = float(info.mip_dual_bound)
    else:
        bound = obj if status == "Optimal" else float("-inf")
    return values, status, obj, bound if np.isfinite(bound) else float("-inf")


def solve_layer_highs(load: np.ndarray, cost: np.ndarray, slots: np.ndarray, budget: int, tm: ExpertTimeModel,
                      warm: np.ndarray, opts, weight: float, max_bottleneck: float | None = None,
                      relax: bool = False, worst_weight: float = 0.0, t_floor: np.ndarray | None = None,
                      fixed_copies: np.ndarray | None = None, copy_cost: np.ndarray | None = None
                      ) -> tuple[np.ndarray, str, float, float, int, int]:
    """`ilp.solve_layer`'s contract on HiGHS: (shares (E, D), status, objective, bound, #vars, #rows);
    shares are NaN when the solve gave nothing usable (the caller keeps its warm start)."""
    E, D = cost.shape
    m = build_layer(load, cost, slots, budget, tm, weight, worst_weight, max_bottleneck, relax, t_floor,
                    fixed_copies, copy_cost)
    warm_cols = warm_vector(m, warm, load, tm)
    values, status, obj, bound = run_highs(m, warm_cols, time_limit=opts.time_limit, gap=opts.gap,
                                           threads=opts.threads, msg=opts.msg)
    if relax:
        return np.full((E, D), np.nan), status, obj, obj, m.num_cols, m.num_rows
    if values is None:
        return np.full((E, D), np.nan), status, obj, bound, m.num_cols, m.num_rows
    xs = values[m.x_cols()].reshape(E, D) > 0.5
    shares = np.where(xs, np.clip(values[m.f_cols()].reshape(E, D), 0, 1), 0.0)
    ok = (shares.sum(axis=1) > 1 - 1e-6).all() and (xs.sum(axis=0) <= slots).all() and xs.sum() <= budget
    if ok:
        shares /= shares.sum(axis=1, keepdims=True)
    else:
        shares = np.full((E, D), np.nan)
    return shares, status, obj, bound, m.num_cols, m.num_rows
