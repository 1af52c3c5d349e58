"""Piccolo's configuration, used by `make migrate` (piccolo migrations forwards)."""

from piccolo.conf.apps import AppRegistry
from piccolo.engine.postgres import PostgresEngine

from app.settings import get_settings

DB = PostgresEngine(config={"dsn": get_settings().database_url})

APP_REGISTRY = AppRegistry(apps=["app.piccolo_app"])
