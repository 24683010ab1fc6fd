"""``python -m services.alerting``: run the alerting service."""

import sys

from services.alerting.app import create_app
from services.alerting.rules import RulesError
from services.alerting.settings import AlertingSettings
from shared.runner import serve


def main() -> None:
    """Build settings from the environment and serve; a bad rules file exits 2."""
    settings = AlertingSettings()
    try:
        app = create_app(settings)
    except RulesError as exc:
        print(f"alerting: the rules file is not valid:\n{exc}", file=sys.stderr)
        sys.exit(2)
    serve(app, settings, port=settings.alerting_port, service="alerting")


if __name__ == "__main__":
    main()
