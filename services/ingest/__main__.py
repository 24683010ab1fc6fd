"""``python -m services.ingest``: run the ingest service."""

from services.ingest.app import create_app
from services.ingest.settings import IngestSettings
from shared.runner import serve


def main() -> None:
    """Build settings from the environment and serve."""
    settings = IngestSettings()
    serve(create_app(settings), settings, port=settings.ingest_port, service="ingest")


if __name__ == "__main__":
    main()
