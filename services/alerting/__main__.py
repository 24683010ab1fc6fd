"""``python -m services.alerting``: run the alerting service."""

from services.alerting.app import create_app
from services.alerting.settings import AlertingSettings
from shared.runner import serve


def main() -> None:
    """Build settings from the environment and serve."""
    settings = AlertingSettings()
    serve(create_app(settings), settings, port=settings.alerting_port, service="alerting")


if __name__ == "__main__":
    main()
