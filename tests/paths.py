"""Where the shared sample data lives: ``shared/`` beside the checkout (as in CI), else /work/shared."""

from pathlib import Path

_BESIDE = Path(__file__).resolve().parents[2] / "shared"
SHARED = _BESIDE if _BESIDE.is_dir() else Path("/work/shared")
