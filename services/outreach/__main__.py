"""``python -m services.outreach``: run the outreach service."""

from services.outreach.app import create_app
from services.outreach.settings import OutreachSettings
from shared.runner import serve


def main() -> None:
    """Build settings from the environment and serve."""
    settings = OutreachSettings()
    serve(create_app(settings), settings, port=settings.outreach_port, service="outreach")


if __name__ == "__main__":
    main()
