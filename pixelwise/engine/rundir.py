"""The run folder and the signals that end a run: a new folder per run, never an old one replaced,
and Ctrl-C / SIGTERM turned into a clean stop that saves a resumable checkpoint."""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

from pixelwise.errors import PixelwiseError
from pixelwise.outputs import output_folder, write_text

__all__ = [
    "StopRequest",
    "drop_metrics_after",
    "foreign_folder_reason",
    "new_run_dir",
    "output_folder",
    "remove_stub_run_dir",
    "write_run_json",
]


def new_run_dir(out_dir: str, name: str) -> Path:
    """``out_dir/name``, or ``name-2``, ``name-3`` ... so an earlier run is never overwritten.

    ``name`` is one folder name (the config refuses separators and ``..``), so the folder is always
    inside ``out_dir``. The folder is made here, not found: a run started at the same moment under
    the same name gets the next number rather than sharing it.
    """
    base = Path(out_dir) / name
    n = 1
    while True:
        candidate = base if n == 1 else base.with_name(f"{name}-{n}")
        try:
            candidate.mkdir(parents=True)
            return candidate
        except OSError as error:
            taken = isinstance(error, FileExistsError) and (
                candidate.exists() or candidate.is_symlink()
            )
            if not taken:  # out_dir itself cannot hold it (a file on the way, no permission)
                raise PixelwiseError(
                    f"train.out_dir {out_dir}: the run folder {candidate} cannot be created "
                    f"({(error.strerror or str(error)).lower()}); set train.out_dir to a folder "
                    "you may write to."
                ) from None
        n += 1


# What a run writes into its run folder besides checkpoints: all of it is removed again when the
# run made the folder and ends before it saved a checkpoint (:func:`remove_stub_run_dir`).
RUN_FILES = (
    "config.yaml", "run.json", "metrics.jsonl", "train_log.jsonl", "predictions.png", "labeled.txt",
)  # fmt: skip
# Logs of rows with a step: a resumed run drops the rows past its checkpoint from each.
STEP_LOGS = ("metrics.jsonl", "train_log.jsonl")
CHECKPOINT_NAMES = ("last.pt", "best.pt")


def foreign_folder_reason(checkpoint: Path, started: dict[str, Any] | None) -> str | None:
    """Why ``checkpoint``'s folder is not that run's own folder to continue in, or None when it is.

    The rule: a resume continues in the checkpoint's folder only when the folder's ``run.json``
    records the start that wrote the checkpoint (``started``, the checkpoint's ``meta["run"]``) and
    the checkpoint is the folder's ``last.pt`` (or the folder has none). Anything else, e.g. a
    ``last.pt`` copied beside another run's ``best.pt`` or a run's earlier ``best.pt`` next to its
    newer ``last.pt``, is continued in a new run folder, so no file the run did not make (or its
    own newer state) is written over.
    """
    folder = checkpoint.parent
    record_path = folder / "run.json"
    if not started:
        return "the checkpoint records no run start (an older checkpoint)"
    if not record_path.is_file():
        return f"{folder} holds no run.json"
    try:
        record = json.loads(record_path.read_text())
        starts = [record.get("run"), *record.get("earlier", [])]
    except (OSError, ValueError, AttributeError, TypeError):
        return f"{record_path} cannot be read"
    # Compared as run.json holds them (JSON), whatever types the checkpoint kept.
    if json.loads(json.dumps(started, default=str)) not in starts:
        return f"{record_path} records another run"
    last = folder / "last.pt"
    if last.exists() and not (checkpoint.exists() and last.samefile(checkpoint)):
        return f"{checkpoint.name} is not the run's newest checkpoint {last}"
    return None


def drop_metrics_after(run_dir: Path, step: int) -> int:
    """Drop the rows of the run's step logs (:data:`STEP_LOGS`) logged after ``step`` (by a run
    killed after it logged but before its checkpoint), so the resumed run does not log them twice;
    a file is rewritten beside and renamed over. Lines that are not a record with a step are kept.
    Returns the number of rows dropped."""
    return sum(_drop_rows_after(run_dir / name, step) for name in STEP_LOGS)


def _drop_rows_after(path: Path, step: int) -> int:
    if not path.is_file():
        return 0
    text = path.read_text()
    lines = [line for line in text.splitlines() if line.strip()]
    kept = [line for line in lines if not _after(line, step)]
    rewritten = "".join(f"{line}\n" for line in kept)
    if rewritten != text:  # rows dropped, or a last line left without its newline by a kill
        write_text(path, rewritten)
    return len(lines) - len(kept)


def _after(line: str, step: int) -> bool:
    try:
        row = json.loads(line)
    except ValueError:
        return False
    return isinstance(row, dict) and isinstance(row.get("step"), int) and row["step"] > step


def remove_stub_run_dir(run_dir: Path) -> bool:
    """Remove the files a run writes (:data:`RUN_FILES`, its tensorboard events) from a run folder
    it made, and the folder when that leaves it empty; used when a run ends before saving any
    checkpoint. A checkpoint or anything else found there is left in place, as is the folder.
    Returns whether the folder is gone."""
    if any((run_dir / name).exists() for name in CHECKPOINT_NAMES):
        return False
    for name in RUN_FILES:
        (run_dir / name).unlink(missing_ok=True)
    board = run_dir / "tensorboard"
    if board.is_dir():
        for events in board.glob("events.out.tfevents.*"):
            events.unlink(missing_ok=True)
        _rmdir_if_empty(board)
    return _rmdir_if_empty(run_dir)


def _rmdir_if_empty(folder: Path) -> bool:
    try:
        folder.rmdir()
    except OSError:  # not empty: something we did not write stays
        return False
    return True


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
