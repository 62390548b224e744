"""The recipes in configs/: every file loads through pixelwise.config, and the papers' numbers hold.

Nothing heavy is built: the files are read and validated, and the facts each recipe's comment
derives from its source (solver files, training scripts) are checked against the values.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from pixelwise.config import Config, load_config

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))

# shelhamer/fcn.berkeleyvision.org voc-fcn8s-atonce/solver.prototxt: a loss SUMMED over the valid
# pixels of one image, base_lr 1e-10, weight_decay 5e-4, momentum 0.99, batch 1.
CAFFE_LR = 1e-10
CAFFE_WD = 5e-4
# The pixel count P each FCN recipe rescales by (its comment derives lr = 1e-10 P, wd = 5e-4 / P):
# VOC's typical 500x375 image, a full Cityscapes frame, a full NYUDv2 frame.
FCN_CAFFE_RECIPES = {
    "fcn8s_voc.yaml": 500 * 375,
    "fcn8s_cityscapes.yaml": 1024 * 2048,
    "fcn8s_nyudv2.yaml": 480 * 640,
}
FCN_CONFIGS = sorted(p.name for p in CONFIGS if p.name.startswith("fcn8s_"))
FCDENSENET_CONFIGS = sorted(p.name for p in CONFIGS if p.name.startswith("fcdensenet"))

# Wording that speaks of who will write something instead of what the project does.
_AUTHOR_TALK = re.compile(
    r"\b(we will|we'll|I will|I'll|the lead|the next person|someone will|will implement|"
    r"should be added|to be added|TODO|FIXME|XXX)\b",
    re.IGNORECASE,
)


def _load(name: str) -> Config:
    return load_config(ROOT / "configs" / name)


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_config_loads_and_validates(path: Path) -> None:
    from pixelwise.models import list_models

    cfg = load_config(path)
    assert isinstance(cfg, Config)
    assert cfg.model.name in list_models()
    assert cfg.name == path.stem, "a recipe's run name is its file name"


def test_fcn_recipes_exist() -> None:
    assert set(FCN_CAFFE_RECIPES) <= set(FCN_CONFIGS)
    assert FCDENSENET_CONFIGS == [
        "fcdensenet103_camvid.yaml",
        "fcdensenet56_camvid.yaml",
        "fcdensenet67_camvid.yaml",
    ]


@pytest.mark.parametrize("name", FCN_CONFIGS)
def test_one_stage_fcn8s_is_the_at_once_network(name: str) -> None:
    """The FCN authors train FCN-8s from VGG16 in one stage only with the scaled skips."""
    cfg = _load(name)
    assert cfg.model.weights_backbone is not None and "VGG16" in cfg.model.weights_backbone
    assert cfg.model.name == "fcn8s_atonce"


@pytest.mark.parametrize("name", sorted(FCN_CAFFE_RECIPES))
def test_fcn_caffe_solver_rescaled_for_a_mean_loss(name: str) -> None:
    """lr x P and wd / P: the same step and the same decay per step as Caffe's summed loss."""
    cfg = _load(name)
    pixels = FCN_CAFFE_RECIPES[name]
    assert cfg.optim.name == "sgd" and cfg.optim.momentum == 0.99 and not cfg.optim.nesterov
    assert cfg.data.batch_size == 1
    assert cfg.schedule.name == "constant"
    assert cfg.optim.lr == pytest.approx(CAFFE_LR * pixels, rel=0.1)
    assert cfg.optim.weight_decay == pytest.approx(CAFFE_WD / pixels, rel=0.1)
    # SGD's decay term is lr * wd * w: it must equal Caffe's 1e-10 * 5e-4 * w.
    assert cfg.optim.lr * cfg.optim.weight_decay == pytest.approx(CAFFE_LR * CAFFE_WD, rel=0.01)


def test_fcn_voc_runs_the_authors_300k_iterations() -> None:
    """voc-fcn8s-atonce: solve.py steps 75 x 4000, solver.prototxt max_iter 300000."""
    cfg = _load("fcn8s_voc.yaml")
    assert cfg.train.iters == 300_000 and cfg.train.epochs is None
    assert cfg.train.eval_every == 4000
    assert (cfg.data.train_split, cfg.data.val_split) == ("sbd_train", "seg11valid")


@pytest.mark.parametrize("name", FCDENSENET_CONFIGS)
def test_fcdensenet_weight_decay_is_lasagnes_gradient(name: str) -> None:
    """SimJeg's train.py adds 1e-4 * sum(w**2) to the loss: 2e-4 * w in the gradient."""
    cfg = _load(name)
    assert cfg.optim.name == "rmsprop"
    assert cfg.optim.weight_decay == pytest.approx(2e-4)
    assert cfg.optim.lr == pytest.approx(1e-3)


@pytest.mark.parametrize("name", ["enet_camvid.yaml", "enet_cityscapes.yaml"])
def test_enet_comment_says_what_decoder_lua_does(name: str) -> None:
    """decoder.lua overwrites the void weight, so the comment must not claim it is 0 there."""
    # The comment as one line of prose, whatever its wrapping.
    text = " ".join(re.sub(r"#", " ", (ROOT / "configs" / name).read_text()).split())
    assert "decoder.lua gives" not in text
    assert re.search(r"overwrites it with 1 / ln\(1\.02 \+ p_\w+\)", text)
    assert re.search(r"trained with (void|it) as a (12th|20th) class", text)
    assert _load(name).loss.class_weights == "enet"


def _project_texts() -> list[Path]:
    return [
        *CONFIGS,
        *sorted((ROOT / "pixelwise").rglob("*.py")),
        *sorted((ROOT / "pixelwise").rglob("*.yaml")),
    ]


def test_comments_speak_of_the_project_not_of_who_will_write_it() -> None:
    offenders = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
        for path in _project_texts()
        for number, line in enumerate(path.read_text().splitlines(), start=1)
        if _AUTHOR_TALK.search(line)
    ]
    assert offenders == []
