"""What a training run shows while it runs.

On a terminal a live bar: iteration, loss terms, learning rate, images/s and the time left. Where
the output is a file (``> train.log``, a cluster's log) a bar's carriage returns would be noise, so
the run writes one plain line per ``train.log_every`` steps instead::

    step 120/300 (40%) | loss 0.4123 aux 0.1022 | lr 1.00e-02 | 12.3 img/s | 1m40s left

``--quiet`` shows neither (the start line, errors and the final scores stay). The same rows go to
``train_log.jsonl`` in the run folder whatever is shown (see :class:`LogRow`), which is what
``pixelwise plot`` draws.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any, TextIO

from tqdm import tqdm

from pixelwise.errors import PixelwiseError

#: How a run shows its progress; ``auto`` is a bar on a terminal and lines otherwise.
MODES = ("auto", "bar", "lines", "quiet")


def resolve_mode(mode: str | bool | None, stream: TextIO | None = None) -> str:
    """``bar``, ``lines`` or ``quiet`` for ``mode`` (None and ``auto``: a bar when ``stream``,
    default stderr where tqdm draws, is a terminal; True: a bar; False: quiet)."""
    if mode is True:
        return "bar"
    if mode is False:
        return "quiet"
    if mode is None or mode == "auto":
        stream = stream or sys.stderr
        return "bar" if getattr(stream, "isatty", lambda: False)() else "lines"
    if mode not in MODES:
        raise PixelwiseError(f"progress is {mode!r}; it is one of {', '.join(MODES)}.")
    return mode


def duration(seconds: float) -> str:
    """``42s``, ``3m05s``, ``2h07m``: short enough for a log line, exact enough for an ETA."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


@dataclass(frozen=True)
class LogRow:
    """One log step: the loss terms averaged since the previous log step (``loss`` is the total),
    the learning rate of the last step, the training speed and the estimated time left."""

    step: int
    total: int
    epoch: float
    terms: dict[str, float]
    lr: float
    images_per_s: float
    seconds_left: float | None

    def as_dict(self) -> dict[str, Any]:
        """The row of ``train_log.jsonl``."""
        row: dict[str, Any] = {"step": self.step, "epoch": round(self.epoch, 4)}
        row.update(self.terms)
        row.update(lr=self.lr, images_per_s=round(self.images_per_s, 2))
        if self.seconds_left is not None:
            row["seconds_left"] = round(self.seconds_left, 1)
        return row

    def line(self) -> str:
        """The plain log line of this row."""
        parts = [f"step {self.step}/{self.total} ({100 * self.step / max(1, self.total):.0f}%)"]
        parts.append(" ".join(f"{short_term(k)} {v:.4f}" for k, v in self.terms.items()))
        parts.append(f"lr {self.lr:.2e}")
        parts.append(f"{self.images_per_s:.1f} img/s")
        if self.seconds_left is not None:
            parts.append(f"{duration(self.seconds_left)} left")
        return " | ".join(p for p in parts if p)

    def postfix(self) -> dict[str, str]:
        """The bar's postfix: the terms, lr and speed (the bar shows the time left itself)."""
        shown = {short_term(k): f"{v:.4f}" for k, v in self.terms.items()}
        return {**shown, "lr": f"{self.lr:.2e}", "img/s": f"{self.images_per_s:.1f}"}


def short_term(term: str) -> str:
    """A loss term's name as shown: ``loss_classifier`` -> ``classifier``; ``loss`` stays."""
    return term.removeprefix("loss_") if term != "loss" else term


class Progress:
    """Shows a run's steps in one of the resolved modes (:func:`resolve_mode`).

    Args:
        mode: ``bar``, ``lines`` or ``quiet`` (resolve ``auto`` first).
        total: the step the run stops at.
        initial: the step it starts from (a resumed run's).
        desc: the bar's name (the run's).
        out: where lines and notes go (stdout, beside the run's other lines).
    """

    def __init__(
        self, mode: str, total: int, initial: int, desc: str, out: TextIO | None = None
    ) -> None:
        self.mode = mode
        self.out = out
        self.bar = tqdm(
            total=total, initial=initial, desc=desc, dynamic_ncols=True, leave=False,
            disable=mode != "bar",
        )  # fmt: skip

    def advance(self) -> None:
        self.bar.update(1)

    def log(self, row: LogRow) -> None:
        """A log step: the bar's postfix, or one plain line."""
        if self.mode == "bar":
            self.bar.set_postfix(row.postfix())
        elif self.mode == "lines":
            self._print(row.line())

    def note(self, text: str) -> None:
        """A line that stays (a validation's score, a skipped batch), above the bar if there is
        one; nothing under ``quiet``."""
        if self.mode == "bar":
            tqdm.write(text, file=self.out or sys.stdout)
        elif self.mode == "lines":
            self._print(text)

    def warn(self, text: str) -> None:
        """A line that is shown even under ``quiet`` (on stderr there)."""
        if self.mode == "quiet":
            print(text, file=sys.stderr, flush=True)
        else:
            self.note(text)

    def close(self) -> None:
        self.bar.close()

    def _print(self, text: str) -> None:
        out = self.out or sys.stdout
        print(text, file=out, flush=True)
