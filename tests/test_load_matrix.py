"""Expert-load matrices: every format reads the same history, the load_matrix generator replays
it, `moesim place --loads` places by it, and bad files get errors naming the file and field."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from moesim.cli import main
from moesim.errors import ConfigError
from moesim.simulator.scenario import load_scenario
from moesim.workloads import load_model
from moesim.workloads.load_matrix import read_load_matrix

from conftest import DATA, toy_file

LOADS = DATA / "loads"
TOY = DATA / "toy"
# (windows=2, layers=2, experts=8): the history in tests/data/loads (hot expert 0 then 7 at layer 0)
HISTORY = np.array([[[40, 10, 10, 10, 10, 10, 5, 5], [1, 1, 1, 1, 1, 1, 1, 93]],
                    [[5, 5, 10, 10, 10, 10, 10, 40], [93, 1, 1, 1, 1, 1, 1, 1]]], dtype=float)


def _csv(path: Path, a: np.ndarray) -> Path:
    rows = ["layer,window," + ",".join(str(e) for e in range(a.shape[2]))]
    rows += [f"{l},{w}," + ",".join(f"{x:g}" for x in a[w, l]) for l in reversed(range(a.shape[1]))
             for w in range(a.shape[0])]  # rows out of order: the reader sorts by window and layer
    path.write_text("\n".join(rows) + "\n")
    return path


def _parquet_long(path: Path, a: np.ndarray) -> Path:
    w, l, e = np.nonzero(a)  # zeros left out, as a sparse long table would
    pd.DataFrame({"window": w, "layer": l, "expert": e, "count": a[w, l, e]}).to_parquet(path)
    return path


def _parquet_wide(path: Path, a: np.ndarray) -> Path:
    W, L, E = a.shape
    df = pd.DataFrame(a.reshape(W * L, E), columns=[f"e{e}" for e in range(E)])
    df.insert(0, "layer", np.tile(np.arange(L), W))
    df.insert(0, "window", np.repeat(np.arange(W), L))
    df.to_parquet(path)
    return path


def _npy(path: Path, a: np.ndarray) -> Path:
    np.save(path, a)
    return path


WRITERS = {"csv": ("h.csv", _csv), "npy": ("h.npy", _npy), "parquet-long": ("h.parquet", _parquet_long),
           "parquet-wide": ("h.pq", _parquet_wide)}


@pytest.mark.parametrize("fmt", sorted(WRITERS))
def test_each_format_round_trips_the_history(tmp_path, fmt):
    name, write = WRITERS[fmt]
    h = read_load_matrix(write(tmp_path / name, HISTORY))
    assert h.loads.shape == (2, 2, 8) and np.array_equal(h.loads, HISTORY)
    assert h.kind == "counts" and h.sources == (str(tmp_path / name),) * 2


def test_npy_2d_is_one_window(tmp_path):
    h = read_load_matrix(_npy(tmp_path / "a.npy", HISTORY[1]))
    assert h.loads.shape == (1, 2, 8) and np.array_equal(h.loads[0], HISTORY[1])


@pytest.mark.parametrize("name, fmt", [("toy-moe8-sglang.json", "sglang-json"), ("toy-moe8-vllm.json", "vllm-json"),
                                       ("toy-moe8.csv", "csv-wide")])
def test_engine_dumps_read_the_same_logical_history(name, fmt):
    """SGLang logical_count and vLLM's physical load window folded onto logical experts by its map."""
    h = read_load_matrix(LOADS / name, load_model(TOY / "toy-moe8.yaml"))
    assert np.array_equal(h.loads, HISTORY) and h.formats == (fmt,)


def test_torch_dump_and_unfilled_windows(tmp_path):
    torch = pytest.importorskip("torch")
    buffer = np.concatenate([HISTORY, np.zeros((3, 2, 8))])  # SGLang's circular buffer, partly filled
    torch.save({"rank": 0, "logical_count": torch.tensor(buffer, dtype=torch.int32)}, tmp_path / "d.pt")
    h = read_load_matrix(tmp_path / "d.pt")
    assert np.array_equal(h.loads, HISTORY) and h.dropped_windows == 3 and h.formats == ("sglang-pt",)


def test_sglang_counts_every_decoder_layer_and_the_moe_ones_are_kept(tmp_path):
    spec = yaml.safe_load((TOY / "toy-moe8.yaml").read_text())
    spec.update(num_layers=3, moe={**spec["moe"], "first_dense_layers": 1})
    (tmp_path / "m.yaml").write_text(yaml.safe_dump(spec))
    dump = np.concatenate([np.zeros((2, 1, 8)), HISTORY], axis=1)  # layer 0 is dense: no expert load
    (tmp_path / "d.json").write_text(json.dumps({"logical_count": dump.tolist()}))
    h = read_load_matrix(tmp_path / "d.json", load_model(tmp_path / "m.yaml"))
    assert np.array_equal(h.loads, HISTORY)


def test_shares_and_counts(tmp_path):
    shares = HISTORY / HISTORY.sum(axis=2, keepdims=True)
    h = read_load_matrix(_npy(tmp_path / "s.npy", shares))
    assert h.kind == "shares"
    assert np.allclose(h.shares(), read_load_matrix(_npy(tmp_path / "c.npy", HISTORY)).shares())
    assert np.allclose(h.mean_shares(), shares.mean(axis=0))


def test_several_files_are_windows_in_order(tmp_path):
    a = _npy(tmp_path / "a.npy", HISTORY[1])
    b = _csv(tmp_path / "b.csv", HISTORY[:1])
    h = read_load_matrix([a, b])
    assert np.array_equal(h.loads, HISTORY[::-1]) and h.sources == (str(a), str(b))
    assert h.formats == ("npy", "csv-wide") and h.describe()["files"] == [str(a), str(b)]


def _scenario(tmp_path: Path, toy_config: dict, routing: dict, **workload) -> Path:
    toy_config["model"] = "toy-moe8.yaml"
    toy_config["workload"].update(routing=routing, **workload)
    for f in LOADS.iterdir():
        (tmp_path / f.name).write_text(f.read_text())
    return toy_file(tmp_path, toy_config)


@pytest.mark.parametrize("per_token", [False, True])
def test_generator_replays_the_matrix_shares(tmp_path, toy_config, per_token):
    path = _scenario(tmp_path, toy_config, {"generator": "load_matrix", "loads": "toy-moe8.csv",
                                             "per_token": per_token}, batch_size=512)
    sc = load_scenario(path)
    k, steps = sc.model.moe.top_k, 40
    total = np.zeros((2, 8))
    for s in range(steps):
        r = sc.routing.step(s, sc.moe_tokens, 2)
        assert np.array_equal(r.counts.sum(axis=2), np.broadcast_to(sc.moe_tokens * k, (2, 2)))  # tokens x top_k
        if per_token:
            assert all((np.sort(e, axis=1)[:, 1:] != np.sort(e, axis=1)[:, :-1]).all() for e in r.token_experts)
        total += r.counts.sum(axis=1)
    freq = total / total.sum(axis=1, keepdims=True)
    expected = sc.routing.expected_inclusion() / k  # the mean shares, capped at one copy per token
    assert np.abs(freq - expected).max() < 0.01
    assert np.abs(expected[0] - HISTORY.sum(axis=0)[0] / HISTORY.sum(axis=(0, 2))[0]).max() < 1e-9  # no cap at l0


def test_generator_cycles_windows_step_by_step(tmp_path, toy_config):
    path = _scenario(tmp_path, toy_config, {"generator": "load_matrix", "loads": "toy-moe8-sglang.json",
                                             "window": "cycle", "steps_per_window": 2}, batch_size=512)
    sc = load_scenario(path)
    hot = [int(sc.routing.step(s, sc.moe_tokens, 2).counts[0].sum(axis=0).argmax()) for s in range(6)]
    assert hot == [0, 0, 7, 7, 0, 0]
    one = load_scenario(path, ["workload.routing.window=1"])
    assert int(one.routing.step(0, one.moe_tokens, 2).counts[0].sum(axis=0).argmax()) == 7


def test_a_simulation_records_the_load_files_it_replayed(tmp_path, toy_config):
    from moesim.simulator.run import simulate

    path = _scenario(tmp_path, toy_config, {"generator": "load_matrix", "loads": "toy-moe8.csv"}, batch_size=64)
    routing = simulate(path).summary["routing"]
    assert routing["generator"] == "load_matrix" and routing["loads"]["files"][0].endswith("toy-moe8.csv")
    assert routing["window"] == "mean"


def test_place_loads_uses_the_matrix(tmp_path, toy_config, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    path = _scenario(tmp_path, toy_config, {"generator": "uniform"}, batch_size=64)
    loads = tmp_path / "one.npy"
    np.save(loads, HISTORY[:1])  # layer 0: expert 0 hottest; layer 1: expert 7
    out = tmp_path / "placed"
    assert main(["place", str(path), "--loads", str(loads), "--methods", "eplb", "--redundant", "1",
                 "--objective", "tokens", "--out", str(out)]) == 0
    assert str(loads) in capsys.readouterr().out
    placed = yaml.safe_load((out / "placement-eplb.yaml").read_text())["layers"]
    copies = [[len(d) if isinstance(d, list) else 1 for d in layer] for layer in placed]
    assert copies[0][0] == 2 and copies[1][7] == 2  # the matrix's hottest expert gets the extra copy
    prov = json.loads((out / "problem.json").read_text())["provenance"]
    assert prov["routing"] == "load_matrix" and prov["loads"]["files"] == [str(loads)]

    from moesim.studies.placement_inputs import problem_from_scenario

    monkeypatch.chdir(tmp_path)  # a relative path in load_scenario's items resolves against the working directory
    sc = load_scenario(path, ["workload.routing.generator=load_matrix", "workload.routing.loads=toy-moe8.csv"])
    p = problem_from_scenario(sc, time_model="tokens")
    tokens = sc.moe_tokens.sum()  # one EP group
    assert p.load_history.shape == (2, 2, 8) and np.allclose(p.load.sum(axis=1), tokens * 2)
    assert np.allclose(p.load[0], p.load_history[:, 0].mean(axis=0))  # layer 0 uncapped: the windows' mean
    assert np.isclose(p.load[1, 0], tokens * 2 * 0.47)  # layer 1: mean share (0.01 + 0.93) / 2 x top_k
    assert np.isclose(p.load_history[0, 1, 7], tokens)  # window 0 alone: a 0.93 share caps at one copy a token
    assert p.load[0].argmax() in (0, 7) and np.isclose(p.load[0, 0], p.load[0, 7])


def _bad(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


@pytest.mark.parametrize("name, text, field, message", [
    ("neg.csv", "1,2,3\n4,-5,6\n", "line 2, column 2", "negative"),
    ("nan.csv", "layer,a,b\n0,1,nan\n", "line 2, column 'b'", "NaN"),
    ("ragged.csv", "1,2,3\n4,5\n", "line 2", "ragged rows"),
    ("word.csv", "1,2,3\n4,x,6\n", "line 2", "not a number"),
    ("ragged.json", '{"logical_count": [[1, 2, 3], [4, 5]]}', "logical_count[1]", "ragged rows"),
    ("keys.json", '{"counts": [[1, 2]]}', "keys", "logical_count"),
    ("broken.json", '{"logical_count": [[1, 2]\n', "line 2", "not valid JSON"),
    ("dup.csv", "layer,a,b\n0,1,2\n0,3,4\n", "line 3", "appears twice"),
    ("m.xlsx", "", "format", "unknown load matrix format"),
])
def test_bad_files_name_the_file_and_field(tmp_path, name, text, field, message):
    path = _bad(tmp_path, name, text)
    with pytest.raises(ConfigError, match=message) as err:
        read_load_matrix(path)
    assert err.value.file == str(path) and err.value.field == field


def test_npy_nan_names_the_index(tmp_path):
    a = HISTORY.copy()
    a[1, 0, 3] = np.nan
    with pytest.raises(ConfigError, match="NaN") as err:
        read_load_matrix(_npy(tmp_path / "a.npy", a))
    assert err.value.field == "array[1, 0, 3]"


@pytest.mark.parametrize("array, field, message", [
    (HISTORY[:, :1], "shape", "1 layers, but model Toy-MoE8 has 2 MoE layers"),
    (HISTORY[:, :, :6], "shape", "6 experts per layer, but model Toy-MoE8 has 8"),
    (np.concatenate([HISTORY[:, :1], np.zeros((2, 1, 8))], axis=1), "window 0, layer 1", "all-zero layer"),
    (np.array([[[9, 0, 0, 0, 0, 0, 0, 0], [1] * 8]]), "layer 0", "fewer than the model's top_k=2"),
])
def test_history_that_does_not_fit_the_model(tmp_path, array, field, message):
    path = _npy(tmp_path / "a.npy", array)
    with pytest.raises(ConfigError, match=message) as err:
        read_load_matrix(path, load_model(TOY / "toy-moe8.yaml"))
    assert err.value.file == str(path) and err.value.field == field


def test_config_and_cli_errors(tmp_path, toy_config, capsys, monkeypatch):
    path = _scenario(tmp_path, toy_config, {"generator": "load_matrix"}, batch_size=8)
    with pytest.raises(ConfigError, match="needs routing.loads"):
        load_scenario(path)
    bad = _npy(tmp_path / "few.npy", HISTORY[:, :, :4])
    assert main(["place", str(path), "--loads", str(bad), "--methods", "eplb", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "--loads" in err and "4 experts per layer" in err
    monkeypatch.chdir(tmp_path)  # the loads file, relative to the working directory
    with pytest.raises(ConfigError, match="window 5 asked but the history has 2"):
        load_scenario(path, ["workload.routing.loads=toy-moe8.csv", "workload.routing.window=5"])
