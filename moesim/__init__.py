"""moesim: a discrete-event simulator and performance modeler for Mixture-of-Experts systems.

The package root holds only the version, the shared base (units, errors) and the CLI; the
public API functions are imported lazily so `import moesim` and `moesim --help` stay fast.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "load_scenario": ("moesim.simulator.scenario", "load_scenario"),
    "simulate": ("moesim.simulator.run", "simulate"),
    "load_device": ("moesim.hardware_profiles", "load_device"),
    "load_cluster": ("moesim.hardware_profiles", "load_cluster"),
    "load_model": ("moesim.workloads", "load_model"),
    "write_run_dir": ("moesim.simulator.run", "write_run_dir"),
    "load_sweep": ("moesim.studies.sweep_config", "load_sweep"),
    "run_sweep": ("moesim.studies.sweep", "run_sweep"),
    "load_recommend": ("moesim.studies.recommend", "load_recommend"),
    "run_recommend": ("moesim.studies.recommend", "run_recommend"),
    "bisect_capacity": ("moesim.studies.capacity", "bisect_capacity"),
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'moesim' has no attribute {name!r}")


__all__ = ["__version__", *_LAZY]


def __dir__() -> list[str]:
    """The public names (what `dir(moesim)` lists in a notebook)."""
    return sorted(__all__)
