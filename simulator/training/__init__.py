"""Training mode: a training step as programs on the step pipeline."""
