"""Studies that run the simulator many times: placement comparisons (above placement and simulator)."""
