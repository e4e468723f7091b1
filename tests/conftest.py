"""Shared fixtures: paths to bundled examples and the hand-calculation toy scenario."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parent / "data"
EXAMPLES = ROOT / "examples"


@pytest.fixture
def toy_config() -> dict:
    """The toy scenario (2 devices, 4 experts, fixed routing) as a mutable mapping."""
    return yaml.safe_load((DATA / "toy" / "toy-scenario.yaml").read_text())


def toy_file(tmp_path: Path, config: dict) -> Path:
    """Write a (modified) toy config next to copies of the toy profiles."""
    for f in (DATA / "toy").glob("*.yaml"):
        if f.name != "toy-scenario.yaml":
            (tmp_path / f.name).write_text(f.read_text())
    path = tmp_path / "scenario.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def example_config(name: str) -> dict:
    return yaml.safe_load((EXAMPLES / name).read_text())


def shrink_serving(cfg: dict, requests: int = 3, output_tokens: int = 3) -> dict:
    """A serving example cut to a few short requests (smoke tests of every example stay fast)."""
    sv = cfg["serving"]
    sv["num_requests"] = requests
    sv["output_tokens"] = {"dist": "fixed", "value": output_tokens}
    sv["prompt_tokens"] = {"dist": "fixed", "value": 64}
    if "users" in sv:
        sv["users"] = min(sv["users"], requests)
    return cfg


def write_config(tmp_path: Path, config: dict, name: str = "scenario.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(config))
    return path
