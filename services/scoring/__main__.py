"""``python -m services.scoring``: run the scoring service."""

from services.scoring.app import create_app
from services.scoring.settings import ScoringSettings
from shared.runner import serve


def main() -> None:
    """Build settings from the environment and serve."""
    settings = ScoringSettings()
    serve(create_app(settings), settings, port=settings.scoring_port, service="scoring")


if __name__ == "__main__":
    main()
