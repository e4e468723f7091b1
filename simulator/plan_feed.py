"""Step plans built ahead of the engine while the event loop runs.

Routing and costing a step is numpy work that does not depend on the timeline (a plan depends
only on the seed and the step), so it can run ahead: in a thread (the default), or in a forked
child process that sends each step's plans through a pipe (`MOESIM_PLAN_FEED=process`). The
child avoids the GIL but pays for pickling every plan; on a quiet 2-core machine the thread is
faster (benchmarks/bench_plan_feed.py, 2026-12-07: process/thread wall 1.07x, CPU 1.19x on
DeepSeek-V3 decode EP32), so the child is used only where asked (it helped only under heavy
load, 0.89x wall). Where fork is unavailable, or the run is itself a worker of a process pool
(a sweep's: daemonic), plans are built in a thread whatever is asked. Results are identical
either way (tests/test_contracts.py).
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Iterator

from moesim.simulator.step_plan import StepPlan

MIN_STEPS_FOR_PROCESS = 8  # a fork costs a few ms: not worth it for a handful of steps


class DirectFeed:
    """Builds each step's plans only when the engine asks: for sources whose steps depend on
    simulated time (a serving scheduler reads the engine's clock), nothing can be built ahead."""

    def __init__(self, plans: Iterator[list[StepPlan]]):
        self._source = plans

    def next(self) -> list[StepPlan] | None:
        return next(self._source, None)

    def close(self) -> None:
        pass


class ThreadFeed:
    """Builds the next step's plans in a worker thread while the current step is simulated."""

    def __init__(self, plans: Iterator[list[StepPlan]]):
        self._source = plans
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="moesim-plan")
        self._next: Future | None = None

    def next(self) -> list[StepPlan] | None:
        got = self._next.result() if self._next is not None else next(self._source, None)
        self._next = self._pool.submit(next, self._source, None) if got is not None else None
        return got

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


def _build_ahead(plans: Iterator[list[StepPlan]], conn, parent_end) -> None:
    """Child process: send every step's plans, then None; an error is sent in their place. Signals
    are the parent's to handle (it stops the child when it stops). The parent's end of the pipe,
    inherited by the fork, is closed first: should the parent die without stopping the child, the
    next send fails and the child ends, instead of blocking on a full pipe for ever."""
    from threadpoolctl import threadpool_limits

    from moesim import interrupts

    interrupts.ignore_in_child()
    parent_end.close()
    threadpool_limits(1)  # the event loop holds the other core: two BLAS threads here would oversubscribe
    try:
        for step_plans in plans:
            conn.send(step_plans)
        conn.send(None)
    except BaseException as err:  # noqa: BLE001 - every failure must reach the parent
        try:
            conn.send(_Failure(err))
        except (pickle.PicklingError, TypeError, AttributeError):
            conn.send(_Failure(RuntimeError(f"{type(err).__name__}: {err}")))
    finally:
        conn.close()


class _Failure:
    def __init__(self, error: BaseException):
        self.error = error


class ProcessFeed:
    """Builds plans in a forked child process; `next` receives them in order."""

    def __init__(self, plans: Iterator[list[StepPlan]]):
        ctx = multiprocessing.get_context("fork")
        self._conn, child = ctx.Pipe(duplex=False)
        self._proc = ctx.Process(target=_build_ahead, args=(plans, child, self._conn), daemon=True,
                                 name="moesim-plans")
        self._proc.start()
        child.close()
        self._done = False

    def next(self) -> list[StepPlan] | None:
        if self._done:
            return None
        try:
            got = self._conn.recv()
        except EOFError:
            self._done = True
            raise RuntimeError("the plan-building process ended without a word (killed?)") from None
        if isinstance(got, _Failure):
            self._done = True
            raise got.error
        if got is None:
            self._done = True
            return None
        return got

    def close(self) -> None:
        self._conn.close()
        if self._proc.is_alive():
            self._proc.terminate()
        self._proc.join()


def plan_feed(plans: Iterator[list[StepPlan]], steps: int | None, interactive: bool = False,
              ahead: bool = False):
    """The feed for a run: built on demand for a source that reads the simulated clock; else a
    thread, or, where `MOESIM_PLAN_FEED=process` asks and `ahead` allows (the scenario's own
    pipeline, nothing the parent must see), a child process for long runs on a platform that
    forks cheaply (Linux)."""
    asked = os.environ.get("MOESIM_PLAN_FEED", "thread")
    if asked not in ("thread", "process"):
        from moesim.errors import ConfigError

        raise ConfigError(f"the environment variable MOESIM_PLAN_FEED takes 'thread' (the default) or 'process', "
                          f"got {asked!r}", field="MOESIM_PLAN_FEED")
    if interactive:
        return DirectFeed(plans)
    forks = sys.platform.startswith("linux") and "fork" in multiprocessing.get_all_start_methods()
    # a daemonic process (a sweep's pool worker) may not have children, and its siblings hold the other cores
    forks = forks and not multiprocessing.current_process().daemon
    wanted = asked == "process"
    if wanted and ahead and forks and steps is not None and steps >= MIN_STEPS_FOR_PROCESS:
        return ProcessFeed(plans)
    return ThreadFeed(plans)
