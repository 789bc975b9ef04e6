from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The read-only real data beside the repository; tests using it skip when absent."""
    if not (SHARED / "market1501").is_dir():
        pytest.skip(f"real data not found at {SHARED}")
    return SHARED
