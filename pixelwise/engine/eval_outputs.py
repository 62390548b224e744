"""What ``pixelwise eval`` leaves behind: a folder per evaluation, and Cityscapes' labelIds files.

Each evaluation gets a folder of its own, ``eval-<split>`` under the output folder (the
checkpoint's run folder by default), ``eval-<split>-2``, ``-3`` ... when that name is taken, so an
earlier evaluation is never overwritten:

- ``eval.json``: the report's ``as_dict()`` under ``"scores"`` (NaN, a class with no evidence,
  as null), with the checkpoint, dataset, split, image count, test-time settings and the size
  scored at (``"scored_at"``: ``"label size"`` or ``"input size"``; the semantic report's
  ``"scored_sizes"`` gives the sizes);
- ``per_class.csv``: class, IoU, accuracy and the class's share of the ground-truth pixels;
- ``confusion.png``: the row-normalised confusion matrix, class names on both axes;
- ``overlay-<index>.png``: image | ground truth | prediction for a few images spread over the
  split, with a legend of the class colours.

The last two and the csv are written when the task's metric has a confusion ``matrix``.

>>> loaded = load_model("runs/demo/best.pt")
>>> result = evaluate_loaded(loaded, split="val")
>>> write_eval_outputs(result, loaded, Path("runs/demo"))   # runs/demo/eval-val/
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

from pixelwise.data import dataset_class
from pixelwise.engine.evaluate import EvalResult, Evaluator, split_dataset
from pixelwise.engine.label_size import SCORED_AT_WORDS
from pixelwise.engine.model_io import LoadedModel
from pixelwise.errors import PixelwiseError
from pixelwise.losses import match_target
from pixelwise.metrics import scores_from_matrix
from pixelwise.outputs import write_text
from pixelwise.tasks.base import NO_TTA, TTA, Inference, Task
from pixelwise.viz import (
    denormalise,
    plot_confusion,
    prediction_grid,
    save_png,
    spread_indices,
)

#: How many images the overlays show, spread evenly over the split.
OVERLAYS = 4


def evaluate_loaded(
    loaded: LoadedModel,
    *,
    split: str | None = None,
    root: str | None = None,
    tta: TTA = NO_TTA,
    label_ids: Path | None = None,
    score_at: str | None = None,
    progress: bool = False,
) -> EvalResult:
    """Score a loaded checkpoint on ``split`` of its run's dataset, as the Trainer validates.

    Args:
        loaded: the checkpoint (:func:`~pixelwise.engine.model_io.load_model`).
        split: default the run's ``data.val_split``.
        root: default the run's ``data.root``.
        tta: test-time augmentation.
        label_ids: a folder (which must exist) to also write every prediction into as Cityscapes
            ``<image stem>_labelIds.png``, during the same pass; Cityscapes runs only.
        score_at: ``"label"`` or ``"input"``; default the run's ``data.score_at``
            (:class:`~pixelwise.engine.evaluate.Evaluator`).
        progress: show a bar of the batches.

    Raises:
        PixelwiseError: ``label_ids`` for a run on another dataset, or a model whose output
            does not cover its whole input.
    """
    if label_ids is not None:
        check_label_ids_dataset(loaded.config.data.dataset)
    task = loaded.task
    dataset, split = split_dataset(loaded.config, split, root)
    if label_ids is not None:
        task = LabelIdsWriter(task, dataset, label_ids)  # type: ignore[assignment]
    evaluator = Evaluator(
        loaded.config, task, split=split, tta=tta, dataset=dataset, score_at=score_at
    )
    return evaluator.run_loaded(loaded, progress=progress)


# -- the folder of one evaluation ----------------------------------------------------------------
def new_eval_folder(parent: Path, split: str) -> Path:
    """Create and return ``parent/eval-<split>``, or ``eval-<split>-N`` with the first free N."""
    parent.mkdir(parents=True, exist_ok=True)
    n = 1
    while True:
        folder = parent / (f"eval-{split}" if n == 1 else f"eval-{split}-{n}")
        try:
            folder.mkdir()  # atomic: two evaluations started together still get two folders
            return folder
        except FileExistsError:
            n += 1


def write_eval_outputs(
    result: EvalResult,
    loaded: LoadedModel,
    parent: Path,
    *,
    tta: TTA = NO_TTA,
    overlays: int = OVERLAYS,
    label_ids: Path | None = None,
) -> Path:
    """Write one evaluation's files into a new folder under ``parent`` and return that folder."""
    folder = new_eval_folder(parent, result.split)
    classes = loaded.classes
    shown = spread_indices(len(result.dataset), overlays)
    written = write_overlays(folder, loaded, result, shown, tta)
    matrix = getattr(result.metric, "matrix", None)
    if matrix is not None:
        write_per_class_csv(matrix, classes, folder / "per_class.csv")
        plot_confusion(matrix, class_names(classes, matrix.shape[0]), folder / "confusion.png")
    record = {
        "checkpoint": str(Path(loaded.source).resolve()),
        "model": loaded.meta["model"],
        "dataset": loaded.config.data.dataset,
        "split": result.split,
        "images": len(result.dataset),
        "tta": asdict(tta),
        "scored_at": SCORED_AT_WORDS[result.scored_at],
        "classes": classes,
        "scores": result.report.as_dict(),
        "overlays": written,
    }
    if label_ids is not None:
        record["label_ids"] = str(label_ids.resolve())
    write_json(record, folder / "eval.json")
    return folder


def write_json(value: Any, path: Path) -> None:
    """Strict JSON (NaN and infinities as null, which every parser reads)."""
    write_text(path, json.dumps(json_safe(value), indent=2, allow_nan=False) + "\n")


def json_safe(value: Any) -> Any:
    """``value`` with non-finite floats as None and tuples as lists, recursively."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def class_names(classes: Sequence[str], count: int) -> list[str]:
    """The names of a ``count``-class matrix's rows; numbers where the checkpoint names fewer."""
    return [classes[i] if i < len(classes) else str(i) for i in range(count)]


def write_per_class_csv(matrix: Tensor, classes: Sequence[str], path: Path) -> None:
    """class, IoU, accuracy, ground-truth pixel share (and count), one row per class.

    IoU and accuracy are empty for a class absent from both ground truth and prediction, as the
    means leave it out (NaN in the report).
    """
    scores = scores_from_matrix(matrix)
    truth = matrix.double().sum(dim=1).cpu()
    total = float(truth.sum())
    handle = io.StringIO(newline="")
    out = csv.writer(handle)
    out.writerow(["class", "iou", "accuracy", "gt_pixel_share", "gt_pixels"])
    names = class_names(classes, matrix.shape[0])
    for name, iou, acc, pixels in zip(
        names, scores.iou, scores.class_accuracy, truth.tolist(), strict=True
    ):
        share = pixels / total if total > 0 else float("nan")
        out.writerow([name, _cell(iou), _cell(acc), _cell(share), int(pixels)])
    write_text(path, handle.getvalue())


def _cell(value: float) -> str:
    return "" if math.isnan(value) else repr(value)  # repr: the float exactly as eval.json has it


@torch.no_grad()
def write_overlays(
    folder: Path, loaded: LoadedModel, result: EvalResult, indices: Sequence[int], tta: TTA
) -> list[dict[str, Any]]:
    """``overlay-<index>.png`` for each of ``indices``: the prediction as evaluation made it."""
    written = []
    for index in indices:
        picture = overlay_picture(loaded.task, loaded.inference, result.dataset, index, tta)
        name = f"overlay-{index}.png"
        save_png(picture, folder / name)
        written.append({"file": name, "index": index, "image": _sample_name(result.dataset, index)})
    return written


def overlay_picture(task: Task, net: Inference, dataset: Any, index: int, tta: TTA) -> np.ndarray:
    """image | ground truth | prediction of one sample, with a legend.

    A task whose prediction is a class-score map (N×C×H×W) gets the same preprocessing and
    test-time augmentation as the evaluation; any other task draws its own picture.
    """
    image, target = task.eval_transforms()(*dataset[index])
    inputs, targets = task.to_device(task.collate([(image, target)]), net.device, net.channels_last)
    with net.precision.autocast():
        outputs = task.predict(net.model, inputs, tta)
    if not (isinstance(outputs, Tensor) and outputs.ndim == 4 and isinstance(targets, Tensor)):
        with net.precision.autocast():
            return task.picture(net.model, dataset, [index], net.device)
    # A valid-padding model predicts the centre only: show the same window of each.
    shown = match_target(outputs, inputs)[0]
    truth = match_target(outputs, targets)[0].cpu()
    d = task.cfg.data
    return prediction_grid(
        [denormalise(shown, d.mean, d.std)], [truth], [outputs.argmax(1)[0].cpu()],
        task.palette, classes=task.classes,
    )  # fmt: skip


def _sample_name(dataset: Any, index: int) -> str | None:
    samples = getattr(dataset, "samples", None)
    try:
        sample = samples[index] if samples is not None else None
    except (IndexError, TypeError):
        return None
    first = sample[0] if isinstance(sample, tuple | list) and sample else sample
    return str(first) if isinstance(first, str | Path) else None


# -- Cityscapes' official format ------------------------------------------------------------------
def check_label_ids_dataset(name: str) -> None:
    """Refuse ``--save-label-ids`` for a run on anything but semantic Cityscapes."""
    cls = dataset_class(name)
    if cls.task != "semantic" or not hasattr(cls, "to_label_ids"):
        raise PixelwiseError(
            f"--save-label-ids writes Cityscapes labelIds files, but this run's dataset is {name}; "
            "drop --save-label-ids (eval writes its scores and pictures into --out)."
        )


def label_ids_name(image: Path) -> str:
    """``frankfurt_000000_000294_leftImg8bit.png`` -> ``frankfurt_000000_000294_leftImg8bit_labelIds.png``.

    cityscapesscripts' evaluation finds the prediction of ``<city>_<seq>_<frame>_gtFine_labelIds.png``
    as the one file under its results folder named ``<city>_<seq>_<frame>*.png``.
    """
    return f"{image.stem}_labelIds.png"


class LabelIdsWriter:
    """A task that also writes every prediction as a Cityscapes labelIds PNG, at the label's size.

    It stands in for the run's task during one evaluation, so the files come from the very
    predictions that were scored (same preprocessing, same test-time augmentation), in one pass.
    Batches come in dataset order (the evaluation never shuffles), which names each prediction.
    Every other attribute is the wrapped task's.
    """

    def __init__(self, task: Task, dataset: Any, folder: Path) -> None:
        self.task, self.dataset, self.folder = task, dataset, folder
        self.next_index = 0
        self.to_label_ids = type(dataset).to_label_ids

    def __getattr__(self, name: str) -> Any:
        return getattr(self.task, name)

    def predict(self, model: nn.Module, inputs: Tensor, tta: TTA = NO_TTA) -> Tensor:
        probs = self.task.predict(model, inputs, tta)
        if tuple(probs.shape[-2:]) != tuple(inputs.shape[-2:]):
            raise PixelwiseError(
                f"{self.task.cfg.model.name} predicts a {probs.shape[-2]}x{probs.shape[-1]} centre "
                f"of its {inputs.shape[-2]}x{inputs.shape[-1]} input, so no full-size labelIds "
                "file can be written; use a model with padding='same' for --save-label-ids."
            )
        for k in range(probs.shape[0]):
            self.write(self.next_index, probs[k : k + 1])
            self.next_index += 1
        return probs

    def write(self, index: int, probs: Tensor) -> Path:
        """Labels of sample ``index`` at its image's full size, as official label ids."""
        image_path = Path(self.dataset.samples[index][0])
        with Image.open(image_path) as image:
            width, height = image.size
        if tuple(probs.shape[-2:]) != (height, width):
            # A resized run predicted at the resized size: back to full size as a score map is
            # upsampled everywhere (bilinear, align_corners=False), then the argmax.
            probs = F.interpolate(
                probs.float(), size=(height, width), mode="bilinear", align_corners=False
            )
        labels = probs.argmax(1)[0]
        path = self.folder / label_ids_name(image_path)
        Image.fromarray(self.to_label_ids(labels)).save(path)  # uint8 H×W: mode "L"
        return path
