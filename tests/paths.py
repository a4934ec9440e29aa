"""Where the tests find the repository and their fixture files, wherever in ``tests/`` a test module lives."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures"
