"""The run folder and the signals that end a run: a new folder per run, never an old one replaced,
and Ctrl-C / SIGTERM turned into a clean stop that saves a resumable checkpoint."""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

from pixelwise.errors import PixelwiseError
from pixelwise.outputs import output_folder, write_text

__all__ = ["StopRequest", "new_run_dir", "output_folder", "write_run_json"]


def new_run_dir(out_dir: str, name: str) -> Path:
    """``out_dir/name``, or ``name-2``, ``name-3`` ... so an earlier run is never overwritten."""
    base = Path(out_dir) / name
    candidate, n = base, 1
    while candidate.exists():
        n += 1
        candidate = base.with_name(f"{name}-{n}")
    try:
        candidate.mkdir(parents=True)
    except OSError as error:
        raise PixelwiseError(
            f"train.out_dir {out_dir}: the run folder {candidate} cannot be created "
            f"({(error.strerror or str(error)).lower()}); set train.out_dir to a folder you may write to."
        ) from None
    return candidate


class StopRequest:
    """Turns SIGINT/SIGTERM into a flag checked after each step, so the step finishes and the run
    saves a resumable checkpoint instead of dying mid-write."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopRequest:
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: leave signals alone
                pass
        return self

    def _handle(self, signum, frame) -> None:
        if self.requested:  # a second Ctrl-C stops at once
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def write_run_json(run_dir: Path, run_info: dict[str, Any], config: dict[str, Any]) -> None:
    """``run.json``: this start's record and the resolved config; earlier starts are kept."""
    path = run_dir / "run.json"
    earlier: list[dict[str, Any]] = []
    if path.is_file():
        try:
            previous = json.loads(path.read_text())
            earlier = [*previous.get("earlier", []), previous.get("run", {})]
        except (ValueError, AttributeError):  # a damaged record is replaced, not fatal
            earlier = []
    record = {"run": run_info, "config": config, "earlier": earlier}
    write_text(path, json.dumps(record, indent=2) + "\n")
