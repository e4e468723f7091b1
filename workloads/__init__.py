"""Workloads: MoE model specs and routing (the interface and its generators)."""

from moesim.workloads.model_spec import ModelSpec
from moesim.workloads.models import list_models, load_model

__all__ = ["ModelSpec", "list_models", "load_model"]
