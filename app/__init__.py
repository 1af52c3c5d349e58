"""market-backend: the Litestar service for market registration and approval."""
