"""The labelled subset (data.labeled_fraction / data.labeled_list) and its two views."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as nnf

from pixelwise.class_weights import class_pixel_counts
from pixelwise.config import config_from_dict
from pixelwise.data import build_dataset
from pixelwise.data.base import IGNORE_INDEX
from pixelwise.data.subset import (
    LabeledSubset,
    SemiSupervised,
    apply_labeled_subset,
    dict_target_transform,
    fraction_subset,
    labeled_subset,
    sample_id,
)
from pixelwise.data.transforms import build_train_transforms
from pixelwise.errors import PixelwiseError


def _config(**data):
    return config_from_dict({"train": {"iters": 1, "seed": data.pop("seed", 0)}, "data": data})


@pytest.fixture
def shapes():
    return build_dataset("shapes", None, "train", num_samples=20, image_size=[24, 24])


class _Files:
    """A split indexed by (image path, label path), as the file-based readers index theirs."""

    name, split, num_classes = "fake", "train", 3

    def __init__(self, stems):
        self.samples = [(Path(f"/d/img/{s}.jpg"), Path(f"/d/lbl/{s}.png")) for s in stems]

    def __len__(self):
        return len(self.samples)


# -- which samples --------------------------------------------------------------------------------
def test_fraction_is_fixed_by_the_seed_and_rounded():
    a = fraction_subset(100, 0.125, seed=0)
    assert a == fraction_subset(100, 0.125, seed=0)
    assert len(a) == 13 and a == sorted(a) and len(set(a)) == 13  # 12.5 rounds half up
    assert a != fraction_subset(100, 0.125, seed=1)
    assert len(fraction_subset(10, 0.25, seed=0)) == 3  # 2.5 -> 3, not Python's round() -> 2
    assert len(fraction_subset(1000, 0.01, seed=3)) == 10
    assert fraction_subset(5, 0.01, seed=0) != []  # at least one
    assert fraction_subset(7, 1.0, seed=0) == list(range(7))
    # Not the first samples: a random draw spread over the split.
    assert a != list(range(13)) and max(a) > 50


def test_fraction_ignores_global_rng_rank_and_process(monkeypatch):
    """A pure function of (seed, size): the global RNG a resume restores, the rank, do not matter."""
    torch.manual_seed(1)
    np.random.seed(1)
    first = fraction_subset(50, 0.2, seed=7)
    torch.manual_seed(99)
    np.random.seed(99)
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert fraction_subset(50, 0.2, seed=7) == first
    torch_state = torch.get_rng_state()
    fraction_subset(50, 0.2, seed=7)
    assert torch.equal(torch.get_rng_state(), torch_state)  # and it draws nothing from them


def test_labeled_subset_from_config(shapes):
    assert labeled_subset(shapes, _config()) is None
    picked = labeled_subset(shapes, _config(labeled_fraction=0.25, seed=4))
    assert picked == fraction_subset(20, 0.25, seed=4) and len(picked) == 5


def test_list_file_is_honoured_by_sample_number(shapes, tmp_path):
    listing = tmp_path / "labeled.txt"
    listing.write_text("# the labelled ones\n3\n\n17  # a comment\n3\n")
    assert labeled_subset(shapes, _config(labeled_list=str(listing))) == [3, 17]
    assert sample_id(shapes, 17) == "17"


def test_list_file_names_samples_by_image_stem(tmp_path):
    dataset = _Files(["2007_000032", "2007_000039", "2008_000001"])
    listing = tmp_path / "l.txt"
    listing.write_text("2008_000001\n2007_000032\n")
    assert labeled_subset(dataset, _config(labeled_list=str(listing))) == [0, 2]


def test_unknown_name_in_list_names_file_and_line(tmp_path):
    dataset = _Files(["a", "b"])
    listing = tmp_path / "l.txt"
    listing.write_text("a\n\nzebra\n")
    with pytest.raises(PixelwiseError) as info:
        labeled_subset(dataset, _config(labeled_list=str(listing)))
    message = str(info.value)
    assert f"{listing} line 3 names 'zebra'" in message and "a, b" in message
    assert "\n" not in message


@pytest.mark.parametrize("text", [None, "", "# only a comment\n"])
def test_absent_or_empty_list_is_one_sentence(tmp_path, text):
    listing = tmp_path / "l.txt"
    if text is not None:
        listing.write_text(text)
    with pytest.raises(PixelwiseError, match=str(listing)):
        labeled_subset(_Files(["a"]), _config(labeled_list=str(listing)))


@pytest.mark.parametrize(
    ("data", "words"),
    [
        ({"labeled_fraction": 0}, "must lie in (0, 1]"),
        ({"labeled_fraction": 1.01}, "must lie in (0, 1]"),
        ({"labeled_fraction": 0.5, "labeled_list": "x.txt"}, "both set"),
    ],
)
def test_config_refuses_bad_values(data, words):
    with pytest.raises(PixelwiseError) as info:
        _config(**data)
    assert words in str(info.value)


# -- what reaches a loss -----------------------------------------------------------------------
def test_labeled_subset_view_holds_the_labelled_samples_only(shapes):
    cfg = _config(labeled_fraction=0.25)
    view = apply_labeled_subset(shapes, cfg)
    picked = labeled_subset(shapes, cfg)
    assert isinstance(view, LabeledSubset) and len(view) == 5
    assert (
        view.classes == shapes.classes and view.num_classes == 6 and view.palette == shapes.palette
    )
    for position, index in enumerate(picked):
        assert torch.equal(view[position][1], shapes[index][1])
    assert apply_labeled_subset(shapes, _config()) is shapes  # nothing configured: unchanged


def test_unlabelled_targets_are_all_ignore(shapes):
    view = apply_labeled_subset(shapes, _config(labeled_fraction=0.25), keep_unlabeled=True)
    assert isinstance(view, SemiSupervised) and len(view) == 20
    picked = set(view.labeled_indices)
    assert len(picked) == 5
    for i in range(20):
        image, mask = view[i]
        original_image, original = shapes[i]
        assert torch.equal(image, original_image)
        assert view.is_labeled(i) == (i in picked)
        if i in picked:
            assert torch.equal(mask, original)
        else:
            assert bool((mask == IGNORE_INDEX).all())
            assert torch.equal(view.load_mask(i), mask)


def test_no_unlabelled_pixel_label_reaches_a_loss_or_the_class_weights(shapes):
    view = SemiSupervised(shapes, [2, 5])
    masks = torch.stack([view[i][1] for i in range(6)])
    logits = torch.randn(6, 6, 24, 24, requires_grad=True)
    nnf.cross_entropy(logits, masks, ignore_index=IGNORE_INDEX).backward()
    touched = logits.grad.abs().sum(dim=(1, 2, 3)) > 0
    assert touched.tolist() == [False, False, True, False, False, True]
    # Class frequencies (median_frequency weights) come from the labelled masks alone.
    counts, _ = class_pixel_counts(view)
    expected, _ = class_pixel_counts(LabeledSubset(shapes, [2, 5]))
    assert torch.equal(counts, expected) and counts.sum() > 0


def test_image_labels_come_from_the_original_mask_and_are_cached(shapes, monkeypatch):
    view = SemiSupervised(shapes, [0], targets="dict")
    mask = shapes[4][1]
    expected = torch.zeros(6)
    expected[mask[mask != IGNORE_INDEX].unique()] = 1
    image, target = view[4]  # unlabelled
    assert bool((target["mask"] == IGNORE_INDEX).all()) and not bool(target["labeled"])
    assert torch.equal(target["image_labels"], expected)
    assert torch.equal(view.image_labels(4), expected)
    assert bool(view[0][1]["labeled"])
    calls = []
    original = shapes.load_mask
    monkeypatch.setattr(shapes, "load_mask", lambda s: calls.append(s) or original(s))
    first = view.image_labels(9)
    assert torch.equal(view.image_labels(9), first) and calls == [9]  # decoded once


def test_dict_targets_move_their_mask_with_the_image(shapes):
    view = SemiSupervised(shapes, [1], targets="dict")
    joint = build_train_transforms(crop_size=[16, 16], hflip=True)
    transform = dict_target_transform(joint)
    torch.manual_seed(0)
    image, target = transform(*view[1])
    assert image.shape == (3, 16, 16) and target["mask"].shape == (16, 16)
    assert torch.equal(target["image_labels"], view.image_labels(1))


# -- every rank the same subset -----------------------------------------------------------------
_RANK_SCRIPT = """
import torch, torch.distributed as dist
from pixelwise.config import config_from_dict
from pixelwise.data import build_dataset
from pixelwise.data.subset import labeled_subset
dist.init_process_group("gloo")
rank = dist.get_rank()
torch.manual_seed(1000 + rank)  # ranks' global RNGs differ, as they do after per-rank seeding
cfg = config_from_dict({"train": {"iters": 1, "seed": 5}, "data": {"labeled_fraction": 0.3}})
mine = labeled_subset(build_dataset("shapes", None, "train", num_samples=40), cfg)
everyone = [None, None]
dist.all_gather_object(everyone, mine)
if rank == 0:
    assert everyone[0] == everyone[1] and len(mine) == 12, everyone
    print("SAME", mine)
dist.destroy_process_group()
"""


@pytest.mark.slow
def test_every_rank_computes_the_same_subset(tmp_path):
    script = tmp_path / "ranks.py"
    script.write_text(_RANK_SCRIPT)
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         str(script)],
        capture_output=True, text=True, timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"SAME {fraction_subset(40, 0.3, seed=5)}" in result.stdout


# -- in the trainer --------------------------------------------------------------------------------
def test_trainer_trains_a_supervised_network_on_the_labelled_subset_and_resumes_with_it(
    tmp_path, one_thread
):
    from pixelwise.engine.train import Trainer
    from tests.test_engine import tiny_config

    raw = tiny_config(tmp_path / "runs", iters=2, eval_every=2, seed=3)
    raw["data"].update(labeled_fraction=0.5, batch_size=2)
    raw["data"]["val_options"] = {"num_samples": 2}
    cfg = config_from_dict(raw)
    trainer = Trainer.from_config(cfg, progress=False)
    expected = fraction_subset(12, 0.5, seed=3)
    assert isinstance(trainer.train_set, LabeledSubset) and trainer.train_set.indices == expected
    assert trainer.iters_per_epoch == 3  # 6 labelled samples in batches of 2, not 12
    trainer.fit(max_steps=1)
    last = trainer.save("last.pt")
    torch.manual_seed(12345)  # the global RNG a resume restores plays no part
    resumed = Trainer.from_config(cfg, resume=last, progress=False)
    assert resumed.train_set.indices == expected and resumed.step == 1
