"""Networks compared on equal footing: what ``pixelwise compare`` trains, measures and writes.

Three steps, one module each: :mod:`~pixelwise.compare.plan` turns the settings into one config
per network and refuses what cannot be compared; :mod:`~pixelwise.compare.run` trains (or loads),
scores and measures each network into typed entries; :mod:`~pixelwise.compare.report` writes
``comparison.md``, ``comparison.json`` and ``comparison.png``.

Every network is trained by the same :class:`~pixelwise.engine.train.Trainer` from one shared base
config (the ``pixelwise demo`` recipe unless ``--config`` names another): the same dataset, split,
seed and so batch order, crop, augmentation, optimizer, schedule and budget. Only the network
differs, and its builder options (the base config's ``model.options`` go to the network the base
config names; ``NAME.key=value`` sets one network's option). With ``recipes=True`` each network
trains with its own paper recipe, ``configs/<model>_<dataset>.yaml``, where one exists, under the
same budget. ``--set NAME:key=value`` (``CompareSettings.network_overrides``) overrides one
network's config after the shared overrides and the recipe, so that each network may keep its
recipe's learning rate or batch size in one comparison. Or the networks come from checkpoints,
and are only evaluated.

The budget is iterations, or wall-clock seconds of training. The learning-rate schedule is a
function of a known number of iterations, so for seconds each network's iteration count is fixed
before its run: a throwaway start of the same run (same seed, a temporary folder) times a few
steps after a warm-up, and the run gets as many iterations as fit into the seconds at that speed.
The table reports the training time each run actually took.

Each network is scored once, after its last step (``train.eval_every`` defaults to the budget, so
``best.pt`` and ``last.pt`` hold the same weights and no validation score picks a checkpoint), by
the Evaluator ``pixelwise eval`` uses. Beside the scores: learnable parameters, GFLOPs of one
forward at the evaluated size (counted on the meta device), batch-1 latency (fp32, eval mode,
median after warm-up), training images/s (the Trainer's, validation time left out), training time
and peak memory of training (CUDA: ``max_memory_allocated``; CPU: sampled growth of the process's
resident memory, see :mod:`pixelwise.bench`).

One seed's difference between two networks may be noise: with ``seeds=N`` (``--seeds N``) each
network trains N times, with ``train.seed`` s, s+1, ... (s its config's), in
``<out>/<name>/seed-<seed>/``; its row is the mean of the runs' scores and speeds ± their sample
standard deviation, and ``comparison.json`` keeps every run's row under ``seeds``. A row whose
per-class IoU is 0 (or undefined) for every class but at most one learnt nothing, however good its
mIoU looks on a background-heavy dataset: it is marked ⚠ in the table, told under it not to be
ranked as better, and carries ``flags`` in the JSON (``single class`` too where its prediction is
one class everywhere).

>>> from pixelwise.compare import CompareSettings, run_comparison
>>> run_comparison(
...     CompareSettings(models=["unet", "enet"], iters=300,
...                     network_overrides={"enet": ["optim.lr=5e-4"]}),
...     "runs/compare",
... )
"""

from pixelwise.compare.plan import (
    BUDGET_KEYS,
    CompareSettings,
    NetworkPlan,
    base_config_dict,
    check_networks,
    check_settings,
    network_config,
    split_network_options,
    split_network_sets,
)
from pixelwise.compare.report import (
    COMPARISON_FILES,
    Comparison,
    NetworkResult,
    command_line,
    comparison_picture,
    format_markdown,
    prediction_flags,
    seed_mean,
    write_comparison,
)
from pixelwise.compare.run import (
    Entry,
    Evaluated,
    Measured,
    Trained,
    iterations_for_seconds,
    measure_network,
    run_comparison,
)

__all__ = [
    "BUDGET_KEYS",
    "COMPARISON_FILES",
    "CompareSettings",
    "Comparison",
    "Entry",
    "Evaluated",
    "Measured",
    "NetworkPlan",
    "NetworkResult",
    "Trained",
    "base_config_dict",
    "check_networks",
    "check_settings",
    "command_line",
    "comparison_picture",
    "format_markdown",
    "iterations_for_seconds",
    "measure_network",
    "network_config",
    "prediction_flags",
    "run_comparison",
    "seed_mean",
    "split_network_options",
    "split_network_sets",
    "write_comparison",
]
