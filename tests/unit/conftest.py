"""The fast tier: pure functions only, so no database, Redis or process is needed."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session", autouse=True)
def migrated_database() -> None:
    """Overrides the suite's migration fixture: nothing here touches PostgreSQL."""
