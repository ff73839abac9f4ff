"""deploy/: the Dockerfile's instructions are the ones promised (base, non-root user, volume, ports,
health check, configuration from the environment), the systemd unit passes `systemd-analyze verify`
and its ExecStart is a command line our CLI accepts, and the sample config passes `config check`."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from dynastore.cli import main

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
DOCKER_INSTRUCTIONS = {
    "FROM", "RUN", "CMD", "LABEL", "EXPOSE", "ENV", "ADD", "COPY", "ENTRYPOINT", "VOLUME", "USER", "WORKDIR",
    "ARG", "ONBUILD", "STOPSIGNAL", "HEALTHCHECK", "SHELL",
}  # fmt: skip


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        word, _, rest = line.partition(" ")
        out.append((word, rest.strip()))
    assert not pending, "the Dockerfile ends inside a continued line"
    return out


def test_the_dockerfile_parses_and_has_what_a_node_image_needs() -> None:
    steps = dockerfile_instructions((DEPLOY / "Dockerfile").read_text())
    unknown = [word for word, _ in steps if word not in DOCKER_INSTRUCTIONS]
    assert not unknown, f"not Dockerfile instructions: {unknown}"
    assert steps[0] == ("FROM", "python:3.11-slim")
    by = {word: [args for w, args in steps if w == word] for word, _ in steps}
    assert any("pip install" in run and " . " in f" {run} " for run in by["RUN"]), "installs the package"
    assert any("useradd" in run for run in by["RUN"]) and by["USER"][-1] == "dynastore", "runs as a non-root user"
    assert by["VOLUME"] == ['["/var/lib/dynastore"]']
    assert set(by["EXPOSE"][0].split()) == {"8098", "8087", "9000"}
    assert "/health" in by["HEALTHCHECK"][0] and "CMD" in by["HEALTHCHECK"][0]
    env = " ".join(by["ENV"])
    for variable in ("DYNASTORE_NODE_HOST=0.0.0.0", "DYNASTORE_NODE_DATA_DIR=/var/lib/dynastore"):
        assert variable in env
    assert by["ENTRYPOINT"] == ['["dynastore", "node"]']
    # What COPY takes exists (the build context is the repository's root).
    for copy in by["COPY"]:
        for source in copy.split()[:-1]:
            assert (DEPLOY.parent / source).exists(), source


def unit_options(text: str) -> dict[str, list[str]]:
    options: dict[str, list[str]] = {}
    for line in text.splitlines():
        if "=" in line and not line.lstrip().startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            options.setdefault(key.strip(), []).append(value.strip())
    return options


def test_the_systemd_unit_runs_the_node_from_its_config_with_hardening_and_its_execstart_parses() -> None:
    unit = unit_options((DEPLOY / "dynastore.service").read_text())
    for key, value in {
        "User": "dynastore",
        "Restart": "on-failure",
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "LimitNOFILE": "65536",
        "StateDirectory": "dynastore",
    }.items():
        assert unit.get(key) == [value], key
    [exec_start] = unit["ExecStart"]
    argv = shlex.split(exec_start)
    assert argv[0].endswith("/dynastore") and argv[1:] == ["node", "--config", "/etc/dynastore/dynastore.toml"]
    # The command line is one our CLI takes (the config path made one that exists here).
    args = [DEPLOY / "dynastore.toml" if a == "/etc/dynastore/dynastore.toml" else a for a in argv[1:]]
    params = main.commands["node"].make_context("node", [str(a) for a in args[1:]]).params
    assert params["config"] == str(DEPLOY / "dynastore.toml")
    # The secret comes from a file named in the config, never from the unit's command line.
    assert "secret" not in exec_start and "cluster_secret_file" in (DEPLOY / "dynastore.toml").read_text()


def test_the_shipped_config_with_the_shipped_environment_passes_config_check(tmp_path: Path) -> None:
    """As the unit runs it: deploy/dynastore.toml with deploy/node.env's variables, the secret file present."""
    secret = tmp_path / "secret"
    secret.write_text("a-secret-of-enough-length\n")
    config = tmp_path / "dynastore.toml"
    config.write_text((DEPLOY / "dynastore.toml").read_text().replace("/etc/dynastore/secret", str(secret)))
    env = {k: v for k, v in os.environ.items() if not k.startswith("DYNASTORE_")}
    for line in (DEPLOY / "node.env").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition("=")
            env[key] = value
    result = subprocess.run(
        [sys.executable, "-m", "dynastore", "config", "check", str(config)],
        capture_output=True, text=True, timeout=60, check=False, env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "OK (node a on 0.0.0.0 advertised as 10.0.0.1" in result.stdout


def test_systemd_analyze_verify_accepts_the_unit(tmp_path: Path) -> None:
    """Any warning counts as a failure (verify exits 0 on an unknown value); the paths the unit names
    on the target host are pointed at their counterparts here."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (apt-get install systemd); the unit was not verified")
    executable = shutil.which("dynastore") or str(Path(sys.executable).parent / "dynastore")
    if not os.access(executable, os.X_OK):
        pytest.skip(f"no dynastore executable to point ExecStart at ({executable})")
    text = (DEPLOY / "dynastore.service").read_text()
    text = text.replace("/usr/local/bin/dynastore", executable)
    text = text.replace("/etc/dynastore/node.env", str(DEPLOY / "node.env"))
    unit = tmp_path / "dynastore.service"
    unit.write_text(text)
    result = subprocess.run(
        [analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60, check=False, cwd=tmp_path
    )
    assert result.returncode == 0 and not result.stderr.strip() and not result.stdout.strip(), (
        result.stdout + result.stderr
    )
