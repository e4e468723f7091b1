"""Calibration against a real machine: measure ops with torch, fit the cost model's efficiencies,
and report simulated-versus-measured error on held-out runs (`moesim calibrate`)."""
