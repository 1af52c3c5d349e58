"""The Prometheus alert rules: valid, and each firing on the series it is about."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from tests.support.processes import ROOT

RULES = ROOT / "deploy" / "prometheus"
promtool = shutil.which("promtool")


@pytest.mark.skipif(promtool is None, reason="promtool not installed (Debian: prometheus)")
def test_alert_rules_are_valid_and_fire_on_crafted_series() -> None:
    assert promtool is not None
    for command in (["check", "rules", "alerts.yml"], ["test", "rules", "alerts_test.yml"]):
        result = subprocess.run(
            [promtool, *command], cwd=RULES, capture_output=True, text=True, check=False
        )
        assert result.returncode == 0, result.stdout + result.stderr
