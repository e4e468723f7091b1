"""Serving mode: requests arrive, a continuous-batching scheduler per attention replica forms
iterations, and the engine replays them; results are per request (TTFT, ITL, TPOT, E2E)."""
