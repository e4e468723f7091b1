"""Expert placement: the Placement structure, built-in policies and placement files."""

from moesim.placement.placement import (
    Placement,
    contiguous,
    from_expert_devices,
    load_placement_file,
    round_robin,
    save_placement_file,
)

__all__ = ["Placement", "contiguous", "from_expert_devices", "load_placement_file", "round_robin",
           "save_placement_file"]
