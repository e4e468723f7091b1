"""Pick a scenario's overlap schedule (`policies.overlap`): a generator function per device."""

from __future__ import annotations

from typing import Callable

from moesim.simulator.overlap.sequential import sequential_stream
from moesim.simulator.overlap.shortcut import shortcut_stream
from moesim.simulator.overlap.two_batch import two_batch_stream
from moesim.simulator.scenario import Scenario


def schedule_for(sc: Scenario) -> Callable:
    overlap = sc.config.policies.overlap
    if overlap == "two_batch":
        return two_batch_stream
    if overlap == "shortcut":
        return shortcut_stream
    return sequential_stream
