"""`make migrate` run as a process."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.support.processes import ROOT


def make_migrate(database_url: str) -> subprocess.CompletedProcess[str]:
    """What `make migrate` runs once the services answer."""
    return subprocess.run(
        [sys.executable, "-m", "scripts.migrate"],
        cwd=ROOT,
        env={**os.environ, "DATABASE_URL": database_url},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
