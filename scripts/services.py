"""`make services`: make sure PostgreSQL and Redis answer, and the databases exist.

Uses the servers at DATABASE_URL and REDIS_URL when they answer. Otherwise, for a
local address, starts throw-away servers from the installed binaries, with their data
under .local/ (git-ignored); when the binaries are missing, says what to install.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import glob
import os
import pwd
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import redis

from app.settings import load_settings

ROOT = Path(__file__).resolve().parent.parent
# Where throw-away servers keep their data (git-ignored).
LOCAL = Path(os.environ.get("LOCAL_SERVICES_DIR") or ROOT / ".local")
PG_DIR = LOCAL / "postgres"
REDIS_DIR = LOCAL / "redis"
LOCAL_HOSTS = {"localhost", "127.0.0.1", "::1", ""}


class ServiceError(RuntimeError):
    pass


def test_database_url(database_url: str) -> str:
    """The test suite's database: TEST_DATABASE_URL, or DATABASE_URL's name + `_test`."""
    return _sibling_database_url(database_url, "TEST_DATABASE_URL", "_test")


def bench_database_url(database_url: str) -> str:
    """`make bench`'s database: BENCH_DATABASE_URL, or DATABASE_URL's name + `_bench`.

    Its own, so that a benchmark never empties the tables a test run is using.
    """
    return _sibling_database_url(database_url, "BENCH_DATABASE_URL", "_bench")


def soak_database_url(database_url: str) -> str:
    """`make soak`'s database: SOAK_DATABASE_URL, or DATABASE_URL's name + `_soak`."""
    return _sibling_database_url(database_url, "SOAK_DATABASE_URL", "_soak")


def _sibling_database_url(database_url: str, override: str, suffix: str) -> str:
    if explicit := os.environ.get(override):
        return explicit
    parts = urlsplit(database_url)
    return urlunsplit(parts._replace(path=parts.path.rstrip("/") + suffix))


def with_database(url: str, name: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path=f"/{name}"))


def say(message: str) -> None:
    print(f"services: {message}", flush=True)


# --- PostgreSQL ---------------------------------------------------------------------------


async def _pg_answers(url: str) -> bool:
    try:
        connection = await asyncpg.connect(with_database(url, "postgres"), timeout=3)
    except (OSError, asyncpg.PostgresError, TimeoutError):
        return False
    await connection.close()
    return True


def _pg_binaries() -> Path:
    found = shutil.which("pg_ctl")
    if found and shutil.which("initdb"):
        return Path(found).parent
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=_version_key)
    if versions:
        return Path(versions[-1]).parent
    raise ServiceError(
        "PostgreSQL does not answer at DATABASE_URL and no server binaries (initdb, pg_ctl) "
        "were found. Install them (Debian: apt-get install postgresql) or set DATABASE_URL "
        "to a running server."
    )


def _version_key(path: str) -> int:
    version = Path(path).parent.parent.name
    return int(version) if version.isdigit() else 0


def _as_server_user(command: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: run it as the `postgres` system user instead."""
    if os.geteuid() != 0:
        return command
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        raise ServiceError(
            "running as root and no `postgres` system user exists to own the throw-away "
            "PostgreSQL server; run as another user or create that user"
        ) from None
    return ["runuser", "-u", "postgres", "--", *command]


def start_local_postgres(url: str) -> None:
    parts = urlsplit(url)
    if parts.hostname not in LOCAL_HOSTS:
        raise ServiceError(f"PostgreSQL at {parts.hostname}:{parts.port} does not answer")
    start_postgres(PG_DIR, parts.port or 5432, parts.username or "postgres")


def start_postgres(
    home: Path,
    port: int,
    superuser: str = "postgres",
    *,
    listen: str = "127.0.0.1",
    trusted_networks: tuple[str, ...] = (),
) -> None:
    """A throw-away cluster in `home` (created on first use) serving `listen`:`port`.

    `listen`: addresses, comma separated; `trusted_networks`: CIDRs besides loopback whose
    clients may connect (tests that put a process on a network of its own).
    """
    bin_dir = _pg_binaries()
    data = home / "data"
    home.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        shutil.chown(home, "postgres", "postgres")
    if not (data / "PG_VERSION").exists():
        say(f"initialising a throw-away PostgreSQL cluster in {data}")
        initdb = [str(bin_dir / "initdb"), "-D", str(data), "-U", superuser, "--auth=trust"]
        subprocess.run(
            _as_server_user([*initdb, "-E", "UTF8", "--locale=C"]),
            check=True,
            stdout=subprocess.DEVNULL,
        )
        with (data / "pg_hba.conf").open("a") as hba:
            hba.writelines(f"host all all {network} trust\n" for network in trusted_networks)
    # Throw-away data: durability settings traded for speed.
    options = (
        f"-p {port} -c listen_addresses={listen} -k {home} -c fsync=off "
        "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
    )
    say(f"starting PostgreSQL on {listen}:{port} from {bin_dir}")
    pg_ctl = [str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(home / "server.log")]
    subprocess.run(
        _as_server_user([*pg_ctl, "-o", options, "-w", "start"]),
        check=True,
        stdout=subprocess.DEVNULL,
    )


def stop_postgres(home: Path) -> bool:
    """Stop the cluster in `home` if it runs; whether it did."""
    data = home / "data"
    if not (data / "postmaster.pid").exists():
        return False
    pg_ctl = str(_pg_binaries() / "pg_ctl")
    stopped = subprocess.run(
        _as_server_user([pg_ctl, "-D", str(data), "-m", "fast", "-w", "stop"]),
        check=False,
        stdout=subprocess.DEVNULL,
    )
    return stopped.returncode == 0


async def ensure_databases(url: str, names: list[str]) -> None:
    connection = await asyncpg.connect(with_database(url, "postgres"), timeout=5)
    try:
        for name in names:
            exists = await connection.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
            if not exists:
                await connection.execute(f'CREATE DATABASE "{name}"')
                say(f"created database {name}")
    finally:
        await connection.close()


# --- Redis ------------------------------------------------------------------------------


def _redis_answers(url: str) -> bool:
    client = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2)
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


def start_local_redis(url: str) -> None:
    parts = urlsplit(url)
    if parts.hostname not in LOCAL_HOSTS:
        raise ServiceError(f"Redis at {parts.hostname}:{parts.port} does not answer")
    server = shutil.which("redis-server")
    if server is None:
        raise ServiceError(
            "Redis does not answer at REDIS_URL and redis-server was not found. Install it "
            "(Debian: apt-get install redis-server) or set REDIS_URL to a running server."
        )
    REDIS_DIR.mkdir(parents=True, exist_ok=True)
    port = parts.port or 6379
    say(f"starting Redis on 127.0.0.1:{port}")
    subprocess.run(
        [
            server,
            *ephemeral_redis_args(port),
            "--daemonize",
            "yes",
            "--dir",
            str(REDIS_DIR),
            "--pidfile",
            str(REDIS_DIR / "redis.pid"),
            "--logfile",
            str(REDIS_DIR / "redis.log"),
        ],
        check=True,
    )
    if not wait_for_redis(url, 10):
        raise ServiceError(f"Redis did not start; see {REDIS_DIR / 'redis.log'}")


def ephemeral_redis_args(port: int) -> list[str]:
    """A Redis on loopback that keeps nothing on disk: a restart loses everything."""
    return ["--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]


def wait_for_redis(url: str, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while not _redis_answers(url):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


# --- commands ---------------------------------------------------------------------------


async def up() -> None:
    settings = load_settings()
    if await _pg_answers(settings.database_url):
        say("PostgreSQL answers at DATABASE_URL")
    else:
        start_local_postgres(settings.database_url)
    dev_db = urlsplit(settings.database_url).path.lstrip("/")
    others = (test_database_url, bench_database_url, soak_database_url)
    names = [urlsplit(url_of(settings.database_url)).path.lstrip("/") for url_of in others]
    await ensure_databases(settings.database_url, [dev_db, *names])
    if _redis_answers(settings.redis_url):
        say("Redis answers at REDIS_URL")
    else:
        start_local_redis(settings.redis_url)


def down() -> None:
    """Stop the throw-away servers this script started, saying which; leaves other
    servers alone."""
    stopped = []
    if stop_postgres(PG_DIR):
        stopped.append(f"PostgreSQL (data in {PG_DIR})")
    pidfile = REDIS_DIR / "redis.pid"
    if pidfile.exists():
        with contextlib.suppress(ProcessLookupError, ValueError):
            pid = int(pidfile.read_text().strip())
            os.kill(pid, signal.SIGTERM)
            stopped.append(f"Redis (pid {pid}, nothing kept)")
        pidfile.unlink(missing_ok=True)
    for server in stopped:
        say(f"stopped the throw-away {server}")
    if not stopped:
        say(
            f"nothing to stop: no throw-away server of `make services` runs from {LOCAL}; "
            "servers it did not start are left alone"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("command", choices=["up", "down"])
    args = parser.parse_args()
    try:
        if args.command == "up":
            asyncio.run(up())
        else:
            down()
    except (ServiceError, subprocess.CalledProcessError) as exc:
        print(f"services: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
