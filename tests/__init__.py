from pathlib import Path

# The repository's root: the example project (dags/, expectations/) the tests run on.
REPO_ROOT = Path(__file__).resolve().parents[1]
