"""`python -m app`: serve the API on HTTP_HOST:HTTP_PORT."""

from app.process import serve_http
from app.settings import get_settings


def main() -> None:
    settings = get_settings()
    serve_http("app.main:create_app", settings.http_host, settings.http_port)


if __name__ == "__main__":
    main()
