"""Workloads: MoE model specs, routing (generators and traces) and request arrivals."""

from moesim.workloads.model_spec import ModelSpec
from moesim.workloads.models import list_models, load_model

__all__ = ["ModelSpec", "list_models", "load_model"]
