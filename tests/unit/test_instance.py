"""`hubd.settings.instance`: the instance number of `hubd serve --instance N`, the metrics
address instance N binds (the file's port plus N-1) and its runtime directory."""

from __future__ import annotations

import pytest

from hubd.settings import ConfigError
from hubd.settings.instance import instance_listen, parse_instance, runtime_dir_for


@pytest.mark.parametrize(("text", "number"), [("1", 1), ("2", 2), ("64", 64), ("65535", 65535)])
def test_instance_numbers_are_accepted(text: str, number: int) -> None:
    assert parse_instance(text) == number


@pytest.mark.parametrize("text", ["0", "-1", "+2", "02", "1.0", "", "a", " 1", "65536", "999999"])
def test_other_instance_names_are_refused_saying_what_is_allowed(text: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_instance(text)
    assert str(info.value) == (
        f"--instance is {text!r}; use a whole number from 1 to 65535 without leading zeros "
        "(the N of hubd@N.service)"
    )


@pytest.mark.parametrize(
    ("listen", "instance", "bound"),
    [
        ("127.0.0.1:9188", None, "127.0.0.1:9188"),
        ("127.0.0.1:9188", 1, "127.0.0.1:9188"),
        ("127.0.0.1:9188", 4, "127.0.0.1:9191"),
        ("[::1]:9188", 2, "[::1]:9189"),
        ("metrics.internal:9188", 3, "metrics.internal:9190"),
        # Port 0: each process gets a free port of its own anyway.
        ("127.0.0.1:0", 7, "127.0.0.1:0"),
        ("127.0.0.1:65534", 2, "127.0.0.1:65535"),
    ],
)
def test_instance_n_binds_the_metrics_port_plus_n_minus_1(
    listen: str, instance: int | None, bound: str
) -> None:
    assert instance_listen(listen, instance) == bound


def test_a_metrics_port_past_65535_names_the_key_and_the_instance() -> None:
    with pytest.raises(ConfigError) as info:
        instance_listen("127.0.0.1:65535", 2)
    assert str(info.value) == (
        "metrics.listen '127.0.0.1:65535' with --instance 2 would be port 65536; ports are "
        "0-65535: lower the port or the instance number"
    )


def test_each_instance_has_a_runtime_directory_of_its_own() -> None:
    assert runtime_dir_for("/run/hubd", None) == "/run/hubd"
    assert runtime_dir_for("/run/hubd", 3) == "/run/hubd-3"
