import pytest

from moesim.units import dtype_bytes, parse_bandwidth, parse_bytes, parse_flops, parse_time


def test_human_units_parse_to_si():
    assert parse_bandwidth("900 GB/s") == 900e9
    assert parse_bandwidth("400 Gb/s") == 50e9  # bits
    assert parse_bytes("80 GiB") == 80 * 2**30
    assert parse_bytes("80 GB") == 80e9
    assert parse_flops("989 TFLOPS") == pytest.approx(989e12)
    assert parse_flops("1979 TOPS") == pytest.approx(1979e12)
    assert parse_time("2 us") == pytest.approx(2e-6)
    assert parse_time("1.5 ms") == pytest.approx(1.5e-3)
    assert parse_bytes(1024) == 1024.0  # plain numbers are SI


def test_bad_units_are_rejected():
    with pytest.raises(ValueError, match="bandwidth"):
        parse_bandwidth("900 GB")
    with pytest.raises(ValueError):
        parse_time("2 parsecs")
    with pytest.raises(ValueError, match="dtype"):
        dtype_bytes("fp7")


def test_dtype_bytes():
    assert dtype_bytes("bf16") == 2
    assert dtype_bytes("fp8") == 1
    assert dtype_bytes("mxfp4") == pytest.approx(4.25 / 8)
