"""`moesim sweep --ray` (studies/sweep_ray.py): the points as Ray tasks on a Ray instance started
here give the rows the local run gives, bit for bit; a cluster address that does not answer, or
is malformed, is refused at once with what to do instead of Ray's minutes of retries."""

import socket

import pandas as pd
import pytest

from moesim.cli import main
from moesim.errors import ConfigError
from moesim.studies.sweep import run_sweep
from moesim.studies.sweep_config import load_sweep
from moesim.studies.sweep_ray import check_address

from test_sweep import _files


def _ray_or_skip(keep: bool = False):
    """Ray started here with two CPUs (left running when `keep`), or the test skipped saying why."""
    ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'moesim[ray]')")
    try:  # a sandbox may forbid Ray's processes or sockets
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    except Exception as err:
        pytest.skip(f"a local Ray instance cannot start here: {err}")
    if not keep:
        ray.shutdown()
    return ray


@pytest.mark.slow  # two Ray starts (~15 s); the default set starts Ray once, below
def test_ray_tasks_give_the_local_rows_bit_for_bit(tmp_path, toy_config):
    path = _files(tmp_path, toy_config, {"axes": {"workload.batch_size": [1, 2, 4], "workload.kv_len": [99, 499]},
                                         "exclude": [{"workload.batch_size": 4, "workload.kv_len": 99}]})
    assert main(["sweep", path, "--out", str(tmp_path / "here"), "--cache", str(tmp_path / "c1"), "--quiet"]) == 0
    ray = _ray_or_skip()
    assert main(["sweep", path, "--ray", "local", "--workers", "2", "--out", str(tmp_path / "ray"),
                 "--cache", str(tmp_path / "c2"), "--quiet"]) == 0
    assert not ray.is_initialized(), "the private instance is shut down"
    here, on_ray = (pd.read_parquet(tmp_path / d / "sweep.parquet") for d in ("here", "ray"))
    assert len(here) == 5 and (here["status"] == "ok").all()
    pd.testing.assert_frame_equal(here, on_ray, check_exact=True)
    assert sorted(p.name for p in (tmp_path / "c2").glob("*.json")) == sorted(p.name for p in (tmp_path / "c1").glob("*.json"))


def test_ray_joins_an_instance_the_caller_started_and_leaves_it_running(tmp_path, toy_config):
    path = _files(tmp_path, toy_config, {"axes": {"workload.batch_size": [1, 2], "workload.kv_len": [99, 499]}})
    cfg, base = load_sweep(path)
    here = run_sweep(cfg, base, tmp_path / "c1")
    ray = _ray_or_skip(keep=True)
    try:
        on_ray = run_sweep(cfg, base, tmp_path / "c2", ray="auto")
        assert ray.is_initialized()
    finally:
        ray.shutdown()
    pd.testing.assert_frame_equal(here, on_ray, check_exact=True)


def test_a_cluster_address_is_checked_before_ray_is_asked():
    assert check_address("local") is None and check_address("auto") == "auto"
    with pytest.raises(ConfigError, match="HOST:PORT"):
        check_address("head-node")
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(ConfigError, match="no Ray cluster answers"):
        check_address(f"127.0.0.1:{port}")
    with socket.create_server(("127.0.0.1", 0)) as server:
        assert check_address(f"ray://127.0.0.1:{server.getsockname()[1]}").startswith("ray://")
