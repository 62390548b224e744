"""Scores at the labels' resolution (issue 21): a resized run is scored against the labels as read,
its probabilities upsampled to each label's size; ``data.score_at: input`` keeps the old number."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from pixelwise.cli import main
from pixelwise.config import config_from_dict
from pixelwise.engine.evaluate import Evaluator
from pixelwise.engine.label_size import OriginalLabels, label_size_pairs, sizes_summary
from pixelwise.engine.model_io import load_model
from pixelwise.engine.train import Trainer
from pixelwise.errors import PixelwiseError
from pixelwise.metrics import ConfusionMatrix, scores_from_matrix
from pixelwise.tasks import build_task
from pixelwise.tasks.semantic import SemanticTask
from tests.test_engine import tiny_config


# -- a hand-made case: a one-pixel line that a reduced size loses ----------------------------------
class LeftColumnIsALine(nn.Module):
    """Logits 2×h×w whatever the image: class 1 ("line") in the left half of the columns, class 0
    elsewhere; at 2×2, class 1 in column 0."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        logits = torch.zeros(n, 2, h, w)
        logits[:, 1, :, : w // 2] = 10.0
        logits[:, 0, :, w // 2 :] = 10.0
        return logits


class Samples:
    """(image, mask) pairs kept in memory: images grey, masks as given."""

    def __init__(self, masks: list[torch.Tensor]) -> None:
        self.masks = masks

    def __len__(self) -> int:
        return len(self.masks)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        mask = self.masks[index]
        return torch.full((3, *mask.shape), 128, dtype=torch.uint8), mask


def line_mask(size: int = 4) -> torch.Tensor:
    """size×size background with a one-pixel vertical line of class 1 in column 1."""
    mask = torch.zeros(size, size, dtype=torch.int64)
    mask[:, 1] = 1
    return mask


def _evaluator(masks, score_at=None, batch_size=2, **data) -> Evaluator:
    config = config_from_dict(
        {
            "data": {"resize": [2, 2], "val_batch_size": batch_size, "num_workers": 0, **data},
            "train": {"iters": 1, "device": "cpu"},
        }
    )
    task = build_task(config, 2, ["background", "line"], [(0, 0, 0), (255, 255, 255)])
    return Evaluator(config, task, dataset=Samples(masks), score_at=score_at)


def _run(evaluator: Evaluator):
    return evaluator.run(LeftColumnIsALine(), torch.device("cpu"))


def test_a_thin_line_lost_at_the_input_size_is_scored_at_the_label_size():
    # Nearest resize 4 -> 2 keeps rows and columns 0 and 2: the line in column 1 is gone.
    input_mode = _evaluator([line_mask()], score_at="input")
    x, resized = input_mode.task.eval_transforms()(*Samples([line_mask()])[0])
    assert tuple(x.shape[-2:]) == (2, 2) and torch.equal(resized, torch.zeros(2, 2).long())
    # At 2×2 the model says "line" in column 0, "background" in column 1, against all background:
    # background IoU 2/4, line IoU 0/2 (predicted, never true) -> mIoU 0.25, pixel acc 0.5.
    old = _run(input_mode).report
    assert old.iou == [0.5, 0.0] and old.mean_iou == 0.25 and old.pixel_accuracy == 0.5
    # At 4×4 the probabilities upsampled (bilinear, align_corners=False) give "line" in columns
    # 0-1 and background in columns 2-3. Line: 4 hits of 8 predicted, 4 true -> IoU 4/8;
    # background: 8 hits, 8 predicted, 12 true -> IoU 8/12; mIoU (1/2 + 2/3) / 2 = 7/12.
    new = _run(_evaluator([line_mask()])).report
    assert new.iou == pytest.approx([2 / 3, 0.5])
    assert new.mean_iou == pytest.approx(7 / 12) and new.pixel_accuracy == 0.75
    assert new.as_dict()["scored_at"] == "label size"
    assert new.as_dict()["scored_sizes"] == {"min": [4, 4], "max": [4, 4], "distinct": 1}
    assert old.as_dict()["scored_at"] == "input size"
    assert old.as_dict()["scored_sizes"] == {"min": [2, 2], "max": [2, 2], "distinct": 1}
    assert new.scored_text() == "scored at the labels' size 4×4"
    assert old.scored_text() == "scored at the network's input size 2×2"


def test_labels_of_different_sizes_share_a_batch_and_each_is_scored_at_its_own_size():
    masks = [line_mask(4), line_mask(8), line_mask(4)]
    together = _run(_evaluator(masks, batch_size=3))
    one_by_one = _run(_evaluator(masks, batch_size=1))
    assert torch.equal(together.metric.matrix, one_by_one.metric.matrix)
    assert together.metric.matrix.sum() == 16 + 64 + 16  # every pixel of every label, as read
    summary = together.report.as_dict()["scored_sizes"]
    assert summary == {"min": [4, 4], "max": [8, 8], "distinct": 2}
    assert together.report.scored_text() == "scored at the labels' sizes 4×4 to 8×8 (2 sizes)"


def test_ignored_pixels_of_the_label_as_read_are_never_counted():
    mask = line_mask()
    mask[0] = 255
    report = _run(_evaluator([mask])).report
    result = _run(_evaluator([mask]))
    assert result.metric.matrix.sum() == 12
    # Line: columns 0-1 predicted on rows 1-3 (6), true column 1 (3) -> 3/6; background:
    # 6 predicted, 9 true, 6 hits -> 6/9.
    assert report.iou == pytest.approx([6 / 9, 3 / 6])


def test_a_valid_padding_window_is_scored_against_the_same_window_of_the_label():
    # A 2×2 centre prediction of a 4×4 input covers the centre 4×4 of an 8×8 label.
    probs = torch.zeros(1, 2, 2, 2)
    probs[:, 1] = 1.0
    label = torch.zeros(8, 8, dtype=torch.int64)
    label[2:6, 2:6] = 1
    [(prediction, target)] = list(label_size_pairs(probs, OriginalLabels([label], (4, 4))))
    assert prediction.shape == target.shape == (1, 4, 4)
    assert bool((prediction == 1).all()) and bool((target == 1).all())


def test_a_task_that_cannot_score_at_the_label_size_scores_at_the_input_size(monkeypatch):
    monkeypatch.setattr(SemanticTask, "scores_at_label_size", False)
    evaluator = _evaluator([line_mask()])
    assert evaluator.score_at == "input"
    assert _run(evaluator).report.mean_iou == 0.25


def test_an_unknown_score_at_is_one_sentence():
    with pytest.raises(PixelwiseError, match="--score-at is 'full'; use 'label'"):
        _evaluator([line_mask()], score_at="full")


def test_sizes_summary_of_nothing_is_none():
    assert sizes_summary([]) is None


# -- a resized run: eval, eval.json, metrics.jsonl ---------------------------------------------------
def _resized_config(tmp_path, **train) -> dict:
    """Shapes at 32×32, resized to 24×20 for the network; validated an image at a time, so that
    evaluation's forwards are predict's (a batched forward may round a tie the other way)."""
    cfg = tiny_config(tmp_path, **train)
    cfg["data"].update(
        {"resize": [24, 20], "crop_size": None, "scale_range": [1.0, 1.0], "val_batch_size": 1}
    )
    return cfg


@pytest.fixture(scope="module")
def resized_run(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("resized")
    trainer = Trainer.from_config(config_from_dict(_resized_config(tmp_path)), progress=False)
    return trainer.save("best.pt")


def test_input_reproduces_the_old_number_and_label_matches_predict(resized_run):
    loaded = load_model(resized_run, "cpu")
    task, model = loaded.task, loaded.model
    dataset = Evaluator(loaded.config, task).dataset
    old = ConfusionMatrix(loaded.meta["num_classes"])
    full = ConfusionMatrix(loaded.meta["num_classes"])
    for index in range(len(dataset)):
        image, mask = dataset[index]
        # Before issue 21: the prediction at 24×20 against the mask resized (nearest) to 24×20.
        x, resized = task.eval_transforms()(image, mask)
        old.update(task.predict(model, x[None]).argmax(1), resized[None])
        # predict's labels are at the image's own size: scored against the mask as read.
        labels, _ = task.predict_image(loaded.inference, image)
        full.update(labels[None], mask[None])
    at_input = Evaluator(loaded.config, task, score_at="input").run_loaded(loaded)
    at_label = Evaluator(loaded.config, task).run_loaded(loaded)
    assert at_input.report.mean_iou == scores_from_matrix(old.matrix).mean_iou
    assert torch.equal(at_input.metric.matrix, old.matrix)
    assert torch.equal(at_label.metric.matrix, full.matrix)
    assert at_label.scored_at == "label" and at_input.scored_at == "input"


def test_eval_writes_and_says_the_size_it_scored_at(resized_run, tmp_path, capsys):
    for flag, words, size in ((), "label size", [32, 32]), (("--score-at", "input"), "input size", [24, 20]):  # fmt: skip
        out = tmp_path / words.replace(" ", "-")
        code = main(["eval", "--checkpoint", str(resized_run), "--device", "cpu", "--out", str(out),
                     "--json", str(out / "scores.json"), *flag])  # fmt: skip
        assert code == 0
        printed = capsys.readouterr().out
        record = json.loads((out / "eval-val" / "eval.json").read_text())
        assert record["scored_at"] == record["scores"]["scored_at"] == words
        assert record["scores"]["scored_sizes"] == {"min": size, "max": size, "distinct": 1}
        assert json.loads((out / "scores.json").read_text())["scored_at"] == words
        whose = "the labels'" if words == "label size" else "the network's input"
        assert f"scored at {whose} size {size[0]}×{size[1]}" in printed.splitlines()[0]


def test_each_validation_row_of_a_training_run_says_the_size(tmp_path):
    cfg = _resized_config(tmp_path, iters=1, eval_every=1)
    trainer = Trainer.from_config(config_from_dict(cfg), progress=False)
    trainer.fit()
    rows = [
        json.loads(line) for line in (trainer.run_dir / "metrics.jsonl").read_text().splitlines()
    ]
    assert rows and all(row["scored_at"] == "label size" for row in rows)
    assert rows[-1]["scored_sizes"] == {"min": [32, 32], "max": [32, 32], "distinct": 1}


def test_data_score_at_input_keeps_the_reduced_size_for_training_and_eval(tmp_path):
    cfg = _resized_config(tmp_path, iters=1, eval_every=1)
    cfg["data"]["score_at"] = "input"
    config = config_from_dict(cfg)
    trainer = Trainer.from_config(config, progress=False)
    trainer.fit()
    row = json.loads((trainer.run_dir / "metrics.jsonl").read_text().splitlines()[-1])
    assert row["scored_at"] == "input size"
    assert row["scored_sizes"] == {"min": [24, 20], "max": [24, 20], "distinct": 1}
    assert Evaluator(config, trainer.task).score_at == "input"
    assert Evaluator(config, trainer.task, score_at="label").score_at == "label"
