"""`python -m simulator` (`make epc`): serve the simulator on EPC_HOST:EPC_PORT."""

import logging

from app.logging import TextFormatter
from app.process import serve_http
from simulator.app import SimulatorSettings


def main() -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(TextFormatter("epc"))
    logging.basicConfig(level=logging.INFO, handlers=[handler])
    settings = SimulatorSettings.from_environment()
    serve_http("simulator.app:create_app", settings.host, settings.port)


if __name__ == "__main__":
    main()
