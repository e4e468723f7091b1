"""The simulator: config schema, op graph, cost model, network fabric, SimPy engine, metrics."""
