"""Whether the runs of a comparison are like for like, in words.

A comparison colours a later run's change against the first as better or worse. That reads as a
regression only when the runs did the same work: runs of different models, of fixed-batch runs
of different step counts or phases, of a serving run against a fixed-batch one, or of serving
runs of different request counts differ by construction. `mismatches` says how, run by run, and
`comparison_warning` puts it in a sentence for the top of the report and the terminal; the report
then marks those runs' changes grey (changed, no direction) instead of green or red.
"""

from __future__ import annotations

from typing import Any

from moesim.reports.run_report import RunData, serving_of


def _workload(run: RunData) -> dict[str, Any]:
    return (run.summary.get("config") or {}).get("workload") or {}


def _requests(run: RunData) -> str:
    sv = (run.summary.get("config") or {}).get("serving") or {}
    if sv.get("num_requests") is not None:
        return f"{sv['num_requests']} requests"
    if sv.get("duration") is not None:
        return f"a duration of {sv['duration']} s"
    return "–"


def mismatches(runs: list[RunData], names: list[str]) -> list[list[str]]:
    """For each run after the first, what differs from the first in the work it did (empty: like
    for like): the model, serving against fixed batch, and then the phase and step count of
    fixed-batch runs or the request count of serving runs."""
    first = runs[0]
    out = []
    for run, name in zip(runs[1:], names[1:]):
        why = []
        m0, m = first.resolved.get("model"), run.resolved.get("model")
        if m0 != m:
            why.append(f"model {m} against {m0}")
        s0, s = serving_of(first.summary) is not None, serving_of(run.summary) is not None
        if s0 != s:
            why.append(f"a {'serving' if s else 'fixed-batch'} run against a {'serving' if s0 else 'fixed-batch'} one")
        elif s:
            if _requests(run) != _requests(first):
                why.append(f"{_requests(run)} against {_requests(first)}")
        else:
            p0, p = _workload(first).get("phase"), _workload(run).get("phase")
            if p0 != p:
                why.append(f"phase {p} against {p0}")
            if run.steps != first.steps:
                why.append(f"{run.steps} steps against {first.steps}")
        out.append(why)
    return out


def comparison_warning(runs: list[RunData], names: list[str]) -> str | None:
    """One paragraph saying which runs are not like for like with the first, or None when all are."""
    found = [(n, why) for n, why in zip(names[1:], mismatches(runs, names)) if why]
    if not found:
        return None
    parts = "; ".join(f"{n}: {', '.join(why)}" for n, why in found)
    return (f"Not like for like: these runs differ from the first ({names[0]}) in the work they did, not only in "
            f"how they did it ({parts}). Their differences are shown but not judged better or worse (grey, "
            "not green or red): a different model, phase, step or request count changes the numbers by "
            "construction, so a change there is not a regression or an improvement.")


def warning_for_dirs(run_dirs: list) -> str | None:
    """`comparison_warning` of run directories (their summary.json only), named as the report names
    them; for the terminal of `moesim report RUN_A RUN_B ...`."""
    import json
    from pathlib import Path

    from moesim.reports.compare_report import run_names

    runs = [RunData(Path(d), json.loads((Path(d) / "summary.json").read_text(encoding="utf-8"))) for d in run_dirs]
    return comparison_warning(runs, run_names(runs))
