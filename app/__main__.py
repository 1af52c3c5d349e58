"""`python -m app`: serve the API on HTTP_HOST:HTTP_PORT, in API_WORKERS processes."""

from app.process import checked_or_exit, serve_http, settings_or_exit


def main() -> None:
    settings = settings_or_exit("api")
    if settings.workers > 1:
        # Checked here once, before any worker starts: a worker whose app refuses the
        # configuration exits 1, which uvicorn's supervisor answers with another worker.
        checked_or_exit("api")
    serve_http("app.main:create_app", settings.http_host, settings.http_port, settings.workers)


if __name__ == "__main__":
    main()
