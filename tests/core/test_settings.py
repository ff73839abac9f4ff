"""Settings: `name=value` overrides and config mappings are parsed by type, and a bad value is refused
with a message that names the setting, leaving the settings it was applied to unchanged."""

from __future__ import annotations

import pytest

from dynastore.settings import DEFAULTS, Settings, SettingsError


def test_overrides_are_parsed_by_type() -> None:
    s = DEFAULTS.with_overrides(["http_connections_max=16", "read_repair_enabled=off", "phi_threshold=9.5"])
    assert (s.http_connections_max, s.read_repair_enabled, s.phi_threshold) == (16, False, 9.5)
    assert DEFAULTS.with_mapping({"peer_connections_max": 8}).peer_connections_max == 8


@pytest.mark.parametrize(
    ("pair", "message"),
    [
        ("http_connections_max=0", "http_connections_max must be positive"),
        ("peer_connections_max=0", "peer_connections_max must be positive"),
        ("http_connections_max=-3", "http_connections_max must be positive"),
        ("http_connections_max=many", "setting http_connections_max expects int, got 'many'"),
        ("http_idle_timeout_ms=0", "http_idle_timeout_ms must be positive"),
        ("r=4", "r must be between 1 and n_val"),
        ("no_such_setting=1", "unknown setting 'no_such_setting'"),
        ("http_connections_max", "--set expects name=value"),
    ],
)
def test_a_bad_override_is_refused_with_the_setting_named_and_changes_nothing(pair: str, message: str) -> None:
    base = Settings()
    with pytest.raises(SettingsError, match=message):
        base.with_overrides([pair])
    assert base == Settings()


def test_a_config_value_of_the_wrong_type_is_refused() -> None:
    with pytest.raises(SettingsError, match="setting http_connections_max expects int, got True"):
        DEFAULTS.with_mapping({"http_connections_max": True})
