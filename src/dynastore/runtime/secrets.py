"""Where a node's cluster secret comes from when it is not in the settings themselves: the file named
by `cluster_secret_file`, or the DYNASTORE_CLUSTER_SECRET environment variable. One place, for the
CLI and for a node run from code alike, so a secret need never be on a command line.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from dynastore.settings import Settings, SettingsError


def resolve(settings: Settings, environ: Mapping[str, str] = os.environ) -> Settings:
    """The settings with `cluster_secret` filled in from its file or the environment (the file wins)."""
    if settings.cluster_secret_file:
        try:
            secret = Path(settings.cluster_secret_file).read_text().strip()
        except OSError as exc:
            raise SettingsError(f"cannot read cluster_secret_file: {exc}") from None
        return settings.replace(cluster_secret=secret)
    if not settings.cluster_secret and environ.get("DYNASTORE_CLUSTER_SECRET"):
        return settings.replace(cluster_secret=environ["DYNASTORE_CLUSTER_SECRET"])
    return settings
