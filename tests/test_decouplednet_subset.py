"""The semi-supervised papers' labelled subsets: N images per class (DecoupledNet's 25, 10, 5),
seeded, written as a list that names them again."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from pixelwise.config import config_from_dict
from pixelwise.data import build_dataset
from pixelwise.data.subset import (
    LABELED_LIST_NAME,
    Balanced,
    LabeledSubset,
    SemiSupervised,
    apply_labeled_subset,
    class_presence,
    labeled_subset,
    list_subset,
    per_class_subset,
    save_labeled_list,
)
from pixelwise.errors import PixelwiseError


def _presence(seed: int = 0, size: int = 400) -> np.ndarray:
    """Multi-label image classes of unequal frequency; class 0 (background) in every image,
    class 5 in exactly 3 images, class 6 in none."""
    rng = np.random.default_rng(seed)
    presence = rng.random((size, 7)) < np.array([1.0, 0.5, 0.2, 0.08, 0.04, 0.0, 0.0])
    presence[[10, 200, 390], 5] = True
    return presence


def _per_class(presence: np.ndarray, indices: list[int]) -> np.ndarray:
    return presence[indices].sum(axis=0)


@pytest.mark.parametrize("per_class", [25, 10, 5, 1])
def test_every_class_gets_at_least_n_images_that_show_it(per_class):
    presence = _presence()
    chosen = per_class_subset(presence, per_class, seed=0)
    counts = _per_class(presence, chosen)
    available = presence.sum(axis=0)
    assert (counts >= np.minimum(per_class, available)).all()
    assert counts[5] == min(3, per_class)  # rarer than N: all 3 of its images
    assert counts[6] == 0  # shown by none: nothing to choose
    assert chosen == sorted(set(chosen))
    # Shared images serve several classes: never more than N per class served, often fewer.
    assert len(chosen) <= per_class * int((available > 0).sum())


def test_a_class_is_not_served_beyond_what_it_lacks():
    """Greedy from the rarest: the rarest class takes exactly N, and the commonest (background,
    in every image) takes nothing of its own."""
    presence = np.zeros((100, 3), dtype=bool)
    presence[:, 0] = True
    presence[:40, 1] = True
    presence[40:, 2] = True  # 60 images
    chosen = per_class_subset(presence, 7, seed=3)
    # Class 1 (40 images) is served first with 7, class 2 then with 7; class 0 already has 14.
    assert _per_class(presence, chosen).tolist() == [14, 7, 7]


def test_the_draw_is_fixed_by_the_seed_and_differs_for_another():
    presence = _presence()
    a = per_class_subset(presence, 10, seed=0)
    assert a == per_class_subset(presence, 10, seed=0)
    np.random.seed(123)  # the global RNG plays no part
    assert a == per_class_subset(presence, 10, seed=0)
    b = per_class_subset(presence, 10, seed=1)
    assert a != b
    assert (_per_class(presence, b)[:5] >= 10).all()


@pytest.mark.parametrize("bad", [0, -5, 2.5, True])
def test_a_bad_number_per_class_is_one_sentence(bad):
    with pytest.raises(PixelwiseError, match="labeled_per_class is .*e.g. 25"):
        per_class_subset(_presence(), bad, seed=0)


# -- through a config and a real split ------------------------------------------------------------
def _cfg(seed: int = 0, **data):
    """A config whose data section carries labeled_per_class (the field config.py is to gain)."""
    fields = {"labeled_per_class": None, "labeled_fraction": None, "labeled_list": None}
    return SimpleNamespace(
        data=SimpleNamespace(**{**fields, **data}), train=SimpleNamespace(seed=seed)
    )


@pytest.fixture(scope="module")
def shapes():
    return build_dataset("shapes", None, "train", num_samples=80, image_size=[24, 24])


def test_labeled_per_class_draws_from_the_splits_masks(shapes):
    chosen = labeled_subset(shapes, _cfg(labeled_per_class=4))
    presence = class_presence(shapes)
    assert (_per_class(presence, chosen) >= np.minimum(4, presence.sum(axis=0))).all()
    assert chosen == labeled_subset(shapes, _cfg(labeled_per_class=4))
    assert chosen != labeled_subset(shapes, _cfg(seed=5, labeled_per_class=4))
    assert len(chosen) < len(shapes)


@pytest.mark.parametrize("wrapped", [False, True])
def test_the_written_list_names_the_same_subset_again(shapes, tmp_path, wrapped):
    cfg = _cfg(seed=2, labeled_per_class=3)
    semi = apply_labeled_subset(shapes, cfg, keep_unlabeled=True, targets="dict")
    assert isinstance(semi, SemiSupervised)
    path = save_labeled_list(Balanced(semi) if wrapped else semi, cfg, tmp_path / "run")
    assert path == tmp_path / "run" / LABELED_LIST_NAME
    text = path.read_text(encoding="utf-8")
    assert text.startswith("# data.labeled_per_class: 3, train.seed: 2\n")
    assert "images per class: background" in text
    assert list_subset(shapes, path) == semi.labeled_indices
    # Named as data.labeled_list, the file gives the run the same labelled images.
    again = config_from_dict({"train": {"iters": 1}, "data": {"labeled_list": str(path)}})
    assert labeled_subset(shapes, again) == semi.labeled_indices


def test_the_fraction_mode_still_draws_and_its_subset_is_written_too(shapes, tmp_path):
    cfg = config_from_dict({"train": {"iters": 1, "seed": 0}, "data": {"labeled_fraction": 0.25}})
    view = apply_labeled_subset(shapes, cfg)
    assert isinstance(view, LabeledSubset) and len(view) == 20
    path = save_labeled_list(view, cfg, tmp_path)
    assert "data.labeled_fraction: 0.25" in path.read_text(encoding="utf-8")
    assert list_subset(shapes, path) == view.indices


def test_no_subset_writes_nothing_and_two_modes_are_refused(shapes, tmp_path):
    assert save_labeled_list(shapes, _cfg(), tmp_path) is None
    assert not (tmp_path / LABELED_LIST_NAME).exists()
    with pytest.raises(PixelwiseError, match="labeled_per_class and data.labeled_fraction"):
        labeled_subset(shapes, _cfg(labeled_per_class=5, labeled_fraction=0.5))


@pytest.mark.parametrize("mode", [{"labeled_per_class": 2}, {"labeled_fraction": 0.5}])
def test_a_run_writes_its_labelled_images_into_its_folder(tmp_path, mode):
    from pixelwise.engine.run import build_run
    from tests.test_engine import tiny_config

    data = tiny_config(tmp_path)
    data["data"].update(mode)
    run = build_run(config_from_dict(data))
    listed = run.run_dir / "labeled.txt"
    ids = [line.split("#")[0].strip() for line in listed.read_text().splitlines()]
    ids = [i for i in ids if i]
    assert 0 < len(ids) < 12  # of the 12 training images, some kept their labels
    if "labeled_fraction" in mode:
        assert len(ids) == 6
    again = dict(data, data={**data["data"], "labeled_list": str(listed)})
    for key in mode:
        again["data"].pop(key)
    assert sorted(ids) == sorted(
        line.split("#")[0].strip()
        for line in (build_run(config_from_dict(again)).run_dir / "labeled.txt").open()
        if line.split("#")[0].strip()
    )


def test_two_subset_modes_are_refused_in_one_sentence(tmp_path):
    from tests.test_engine import tiny_config

    data = tiny_config(tmp_path)
    data["data"].update(labeled_per_class=2, labeled_fraction=0.5)
    with pytest.raises(PixelwiseError, match="are both set; keep one"):
        config_from_dict(data)
