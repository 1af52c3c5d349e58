"""`python -m app`: serve the API on HTTP_HOST:HTTP_PORT."""

from app.process import serve_http, settings_or_exit


def main() -> None:
    settings = settings_or_exit("api")
    serve_http("app.main:create_app", settings.http_host, settings.http_port)


if __name__ == "__main__":
    main()
