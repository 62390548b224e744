"""One evaluation path: the Trainer's validation, `eval`, `predict` and a notebook agree."""

import json

import numpy as np
import torch

from pixelwise.cli import main
from pixelwise.config import config_from_dict
from pixelwise.engine.evaluate import Evaluator, evaluate_checkpoint
from pixelwise.engine.model_io import load_model
from pixelwise.engine.train import Trainer
from pixelwise.tasks.base import TTA
from pixelwise.viz import palette_array
from tests.test_engine import tiny_config


def _resized_run(tmp_path):
    """A run whose data is resized to 24×20 from 32×32 shapes; weights random, nothing trained."""
    cfg = tiny_config(tmp_path)
    cfg["data"].update({"resize": [24, 20], "crop_size": None, "scale_range": [1.0, 1.0]})
    trainer = Trainer.from_config(config_from_dict(cfg), progress=False)
    return trainer, trainer.save("best.pt")


def test_predict_preprocesses_as_eval_and_answers_at_the_image_size(tmp_path):
    trainer, checkpoint = _resized_run(tmp_path)
    loaded = load_model(checkpoint, "cpu")
    task = loaded.task
    evaluator = Evaluator(loaded.config, task)
    image, _ = evaluator.dataset[1]
    assert tuple(image.shape[-2:]) == (32, 32)
    # What evaluation scores for this image: the transformed (resized) image through the model.
    x, _ = task.eval_transforms()(image, torch.zeros(32, 32, dtype=torch.int64))
    assert tuple(x.shape[-2:]) == (24, 20)
    scored = task.predict(loaded.model, x[None], TTA()).argmax(1)[0]
    labels, probs = task.predict_image(loaded.inference, image)
    assert torch.equal(probs.argmax(1)[0], scored)
    assert tuple(labels.shape) == (32, 32)
    # The CLI writes the same labels, at the image's own size.
    from PIL import Image

    path = tmp_path / "frame.png"
    Image.fromarray(image.permute(1, 2, 0).numpy()).save(path)
    code = main(["predict", "--checkpoint", str(checkpoint), str(path), "--out", str(tmp_path / "out"),
                 "--device", "cpu"])  # fmt: skip
    assert code == 0
    written = torch.from_numpy(
        np.asarray(Image.open(tmp_path / "out" / "frame_label.png").convert("RGB")).astype("int64")
    )
    colours = torch.from_numpy(palette_array(loaded.palette).astype("int64"))
    assert torch.equal(written, colours[labels])


def test_eval_command_notebook_and_trainer_validation_give_the_same_scores(tmp_path):
    trainer, checkpoint = _resized_run(tmp_path)
    during_training = trainer.validate()
    result = evaluate_checkpoint(checkpoint, device="cpu")
    out = tmp_path / "scores.json"
    assert (
        main(["eval", "--checkpoint", str(checkpoint), "--json", str(out), "--device", "cpu"]) == 0
    )
    from_cli = json.loads(out.read_text())
    assert result.split == "val" and len(result.dataset) == 4
    assert result.report.mean_iou == during_training.mean_iou == from_cli["mean_iou"]
    assert result.report.score == result.report.mean_iou
    # README's three lines: the table `pixelwise eval` prints.
    assert result.report.format(result.dataset.classes).splitlines()[-1].startswith("mIoU")
