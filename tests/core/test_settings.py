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
        ("anti_entropy_verify_batch_keys_max=0", "anti_entropy_verify_batch_keys_max must be positive"),
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


# --- Config file [node] table, DYNASTORE_* environment, precedence -------------------------------------------


def test_the_config_file_holds_settings_at_the_top_level_and_node_options_in_the_node_table() -> None:
    from dynastore.settings import NodeOptions, combine, config_layer

    layer = config_layer({"n_val": 5, "r": "3", "node": {"name": "a", "seeds": ["10.0.0.1:9000"], "http_port": 8100}})
    settings, node = combine(layer)
    assert (settings.n_val, settings.r) == (5, 3)
    assert node == NodeOptions(name="a", seeds=("10.0.0.1:9000",), http_port=8100)


def test_precedence_is_flag_then_environment_then_file_then_default() -> None:
    from dynastore.settings import Layer, combine, config_layer, environment_layer, overrides_layer

    file = config_layer({"cluster_name": "file", "n_val": 5, "node": {"name": "file", "host": "0.0.0.0"}})
    env = environment_layer({"DYNASTORE_CLUSTER_NAME": "env", "DYNASTORE_NODE_NAME": "env", "DYNASTORE_R": "4"})
    flags = overrides_layer(["cluster_name=flag"])
    settings, node = combine(file, env, flags, Layer({}, {"name": "flag"}, []))
    # Each value from the highest layer naming it; r=4 holds because the file's n_val=5 is combined first.
    assert (settings.cluster_name, settings.n_val, settings.r) == ("flag", 5, 4)
    assert (node.name, node.host, node.http_port) == ("flag", "0.0.0.0", 8098)


def test_variables_that_name_no_setting_or_node_option_are_left_alone() -> None:
    from dynastore.settings import environment_layer

    layer = environment_layer(
        {
            "DYNASTORE_CA": "/ca.pem",
            "DYNASTORE_USER": "alice",
            "DYNASTORE_PASSWORD": "pw",
            "DYNASTORE_NODE_X": "1",
            "PATH": "/bin",
        }
    )
    assert (layer.settings, layer.node, layer.problems) == ({}, {}, [])
    # The cluster secret's variable is the cluster_secret setting's own, as it always meant.
    assert environment_layer({"DYNASTORE_CLUSTER_SECRET": "s" * 16}).settings == {"cluster_secret": "s" * 16}


def test_a_variable_naming_a_setting_with_a_bad_value_is_an_error_naming_the_variable() -> None:
    from dynastore.settings import combine, environment_layer

    layer = environment_layer(
        {"DYNASTORE_N_VAL": "three", "DYNASTORE_NODE_HTTP_PORT": "70000", "DYNASTORE_NODE_LOG_LEVEL": "loud"}
    )
    assert layer.problems == [
        "DYNASTORE_NODE_HTTP_PORT: http_port must be from 1 to 65535, got 70000",
        "DYNASTORE_NODE_LOG_LEVEL: log_level must be one of debug, info, warning, error, got 'loud'",
        "DYNASTORE_N_VAL: setting n_val expects int, got 'three'",
    ]
    with pytest.raises(SettingsError, match="DYNASTORE_N_VAL"):
        combine(layer)


def test_every_problem_of_a_config_is_listed_each_naming_its_key() -> None:
    from dynastore.settings import config_layer, problems_of

    layer = config_layer(
        {"n_val": "x", "no_such": 1, "name": "a", "node": {"weight": 0, "bogus": 1, "seeds": ["nohost"]}}
    )
    problems = problems_of(layer)
    assert len(problems) == 6, problems
    for key in ("n_val", "no_such", "name", "[node] weight", "[node] bogus", "[node] seeds"):
        assert any(p.startswith(key) for p in problems), (key, problems)
    assert "[node] table" in next(p for p in problems if p.startswith("name"))
    # Rules between settings are checked once the layers are combined, all of them.
    crossed = problems_of(config_layer({"r": 3, "w": 3, "n_val": 2}))
    assert crossed == ["r must be between 1 and n_val", "w must be between 1 and n_val"]


def test_no_setting_can_be_mistaken_for_a_node_option_variable() -> None:
    from dynastore.settings import NODE_OPTION_NAMES, env_variable, setting_names

    assert not any(name.startswith("node_") for name in setting_names())
    assert {env_variable(n) for n in NODE_OPTION_NAMES}.isdisjoint(env_variable(n) for n in setting_names())
    assert env_variable("advertise_host") == "DYNASTORE_NODE_ADVERTISE_HOST"
    assert env_variable("n_val") == "DYNASTORE_N_VAL"
