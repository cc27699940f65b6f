"""BIND_ADDRESS / METRICS_BIND_ADDRESS (issue 13, item 11): parsed as IP addresses, with the
container-friendly wildcard as default, and the address checks connect back to."""

from __future__ import annotations

import pytest

from aiconv.config import ConfigError, Settings
from aiconv.web.server import local_address


def test_both_default_to_every_interface() -> None:
    settings = Settings.from_env({})
    assert (settings.bind_address, settings.metrics_bind_address) == ("0.0.0.0", "0.0.0.0")


@pytest.mark.parametrize(
    ("given", "parsed"),
    [("127.0.0.1", "127.0.0.1"), (" 10.0.0.5 ", "10.0.0.5"), ("::", "::"), ("::0001", "::1")],
)
def test_an_ip_address_is_taken_normalised(given: str, parsed: str) -> None:
    settings = Settings.from_env({"BIND_ADDRESS": given, "METRICS_BIND_ADDRESS": given})
    assert (settings.bind_address, settings.metrics_bind_address) == (parsed, parsed)


@pytest.mark.parametrize("variable", ["BIND_ADDRESS", "METRICS_BIND_ADDRESS"])
@pytest.mark.parametrize("value", ["localhost", "127.0.0.1:8000", "256.0.0.1", "0.0.0.0/0"])
def test_anything_but_an_ip_address_is_refused_naming_the_variable(
    variable: str, value: str
) -> None:
    with pytest.raises(ConfigError) as refused:
        Settings.from_env({variable: value})
    assert refused.value.variable == variable
    assert "expected an IP address" in str(refused.value)


@pytest.mark.parametrize(
    ("bound", "reached_at"),
    [("0.0.0.0", "127.0.0.1"), ("::", "::1"), ("127.0.0.2", "127.0.0.2"), ("10.1.2.3", "10.1.2.3")],
)
def test_a_listener_is_reached_at_loopback_only_when_bound_to_every_interface(
    bound: str, reached_at: str
) -> None:
    assert local_address(bound) == reached_at
