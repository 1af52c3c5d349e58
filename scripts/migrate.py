"""`make migrate`: piccolo's `migrations forwards market`, said in one line.

Piccolo's own report counts every migration as "already complete" before it lists
those "not yet run", which on a new database reads as both at once. This runs the same
forwards migration and says what it did: `migrate: 6 applied, now up to date (6)` or
`migrate: up to date (6), nothing to apply`. Piccolo's own output is shown only when a
migration fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import sys

from piccolo.apps.migrations.commands.forwards import ForwardsMigrationManager
from piccolo.apps.migrations.tables import Migration

from app.logging import address_of
from app.settings import get_settings

APP = "market"


async def applied() -> set[str]:
    names: list[str] = await Migration.get_migrations_which_ran(app_name=APP)
    return set(names)


async def migrate(output: io.StringIO) -> str:
    """Apply what is pending, piccolo's report into `output`; the line that says what was
    done. Raises what piccolo raised, or RuntimeError when it reports a failure."""
    manager = ForwardsMigrationManager(app_name=APP)
    with contextlib.redirect_stdout(output):
        await manager.create_migration_table()
        before = await applied()
        result = await manager.run()
    if not result.success:
        raise RuntimeError(result.message)
    after = await applied()
    if after == before:
        return f"migrate: up to date ({len(after)}), nothing to apply"
    return f"migrate: {len(after - before)} applied, now up to date ({len(after)})"


def main() -> int:
    output = io.StringIO()
    try:
        line = asyncio.run(migrate(output))
    except Exception as error:  # piccolo's report and the error, then a failing status
        sys.stderr.write(output.getvalue())
        where = address_of(get_settings().database_url)
        print(f"migrate: failed on {where}: {error}", file=sys.stderr)
        return 1
    print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
