"""``python -m churnwatch``: the same as the ``churnwatch`` console script."""

from churnwatch.cli import main

main()
