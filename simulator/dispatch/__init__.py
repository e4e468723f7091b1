"""Dispatch algorithms: each turns one layer's routed rows and placement into the traffic of its stages."""
