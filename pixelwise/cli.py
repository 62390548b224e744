"""The ``pixelwise`` command: a thin layer over the library.

A :class:`~pixelwise.errors.PixelwiseError` becomes one line on stderr and exit status 2; ``--debug``
shows the traceback instead.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from importlib import resources
from pathlib import Path

from pixelwise.engine.rundir import output_folder as _output_folder
from pixelwise.errors import PixelwiseError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pixelwise",
        description="Semantic segmentation networks of 2014-2017, faithful to their papers.",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = sub.add_parser(
        "demo", help="train a small U-Net on the built-in shapes dataset (CPU, minutes)"
    )
    demo.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    _add_progress(demo)

    train = sub.add_parser("train", help="train from a YAML config")
    train.add_argument("config", help="a YAML file, e.g. configs/enet_camvid.yaml")
    train.add_argument(
        "overrides", nargs="*", metavar="key=value", help="config overrides, e.g. optim.lr=0.01"
    )
    train.add_argument(
        "--resume",
        metavar="LAST_PT",
        help="continue a run from its last.pt; give the run's config.yaml: only train.iters, "
        "train.epochs, train.eval_every, train.log_every, train.vis_samples, train.device, "
        "data.num_workers and data.root may differ, any other difference is refused",
    )
    _add_progress(train)

    ev = sub.add_parser("eval", help="evaluate a checkpoint on a split")
    ev.add_argument("--checkpoint", required=True)
    ev.add_argument("--split", help="default: the config's val_split")
    ev.add_argument("--root", help="dataset root (default: the one the run was trained with)")
    _add_tta(ev)
    ev.add_argument("--confusion", metavar="PNG", help="also write the confusion matrix picture")
    ev.add_argument("--json", metavar="FILE", help="also write the scores as JSON")
    ev.add_argument(
        "--overwrite", action="store_true", help="replace an existing --json or --confusion file"
    )
    ev.add_argument(
        "--out", metavar="DIR",
        help="where this evaluation's folder goes (default: the checkpoint's folder): a new "
        "eval-<split>[-N]/ each time, with eval.json, per_class.csv, confusion.png and overlays",
    )  # fmt: skip
    ev.add_argument(
        "--score-at", choices=["label", "input"], default=None,
        help="label: upsample each prediction to its label's own size before scoring (the "
        "papers' protocol); input: score at the size the network sees after data.resize, "
        "against labels resized to it (default: the run's data.score_at, label)",
    )  # fmt: skip
    ev.add_argument(
        "--save-label-ids", metavar="DIR",
        help="Cityscapes: also write each prediction as <image>_labelIds.png (official label ids, "
        "full size) for cityscapesscripts' evaluation",
    )  # fmt: skip

    pr = sub.add_parser(
        "predict", help="segment images with a checkpoint",
        description="Segment each image; one that cannot be read is refused and the others go "
        "on. Exit status: 0 when every image was written, 1 when some were and others refused "
        "(named in the closing summary), 2 when none could be or the command itself was refused.",
    )  # fmt: skip
    pr.add_argument("--checkpoint", required=True)
    pr.add_argument("images", nargs="+", metavar="IMAGE")
    pr.add_argument(
        "--out", required=True, help="folder for <name>_label.png and <name>_overlay.png"
    )
    pr.add_argument("--overwrite", action="store_true", help="replace outputs already in --out")
    pr.add_argument(
        "--score-threshold", type=float, default=0.5,
        help="instance models: detections scoring below it are left out (default: 0.5)",
    )  # fmt: skip
    _add_tta(pr)

    export = sub.add_parser(
        "export", help="write a checkpoint's network as ONNX or TorchScript, checked against torch"
    )
    export.add_argument("--checkpoint", required=True)
    export.add_argument("--format", choices=("onnx", "torchscript"), default="onnx")
    export.add_argument("--out", required=True, help="the file to write, e.g. model.onnx")
    export.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    export.add_argument(
        "--size", type=int, nargs=2, metavar=("H", "W"),
        help="size to trace at (default: the run's data.resize, else crop size); H and W stay dynamic",
    )  # fmt: skip
    export.add_argument("--opset", type=int, default=17, help="ONNX opset (default: 17)")

    models = sub.add_parser("models", help="list the networks (name, paper, year, parameters)")
    models.add_argument("--flops", action="store_true", help="add GFLOPs at the paper's input size")
    models.add_argument(
        "--zoo", action="store_true", help="list the authors' released weights pixelwise converts"
    )

    convert = sub.add_parser(
        "convert", help="turn the authors' released weights into a pixelwise checkpoint"
    )
    convert.add_argument("--model", required=True, help="a zoo name (pixelwise models --zoo)")
    convert.add_argument("--weights", required=True, help="the released file, e.g. a .caffemodel")
    convert.add_argument("--prototxt", help="the release's deploy .prototxt, where it needs one")
    convert.add_argument("--out", required=True, help="the checkpoint to write, e.g. model.pt")
    convert.add_argument("--overwrite", action="store_true", help="replace an existing --out file")

    bench = sub.add_parser(
        "bench", help="parameters, GFLOPs, latency, training speed and peak memory of networks"
    )
    bench.add_argument("--models", required=True, help="comma-separated, e.g. enet,linknet")
    bench.add_argument("--size", type=int, nargs=2, default=[360, 480], metavar=("H", "W"))
    bench.add_argument(
        "--batch", type=int, default=4, help="N: the 2nd latency's and training's batch"
    )
    bench.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    bench.add_argument("--amp", action="store_true", help="autocast: bf16 (native CPUs) or fp16")
    bench.add_argument("--channels-last", action="store_true")
    bench.add_argument("--compile", action="store_true", help="torch.compile each network")
    bench.add_argument("--classes", type=int, help="output classes (default: each paper's)")
    bench.add_argument("--runs", type=int, default=5, help="timed calls per figure (median)")
    bench.add_argument("--warmup", type=int, default=2, help="untimed calls first")
    bench.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    bench.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    bench.add_argument("--overwrite", action="store_true", help="replace an existing --json file")
    bench.add_argument(
        "overrides", nargs="*", metavar="network.option=value",
        help="a network's build option, e.g. unet.padding=same",
    )  # fmt: skip

    cmp = sub.add_parser(
        "compare", help="train (or load) several networks under one setting; table, JSON, picture"
    )
    cmp.add_argument("--models", help="comma-separated networks to train, e.g. unet,enet,linknet")
    cmp.add_argument("--checkpoints", help="comma-separated checkpoints to evaluate instead")
    cmp.add_argument(
        "--out", required=True, help="folder for comparison.md/.json/.png and run folders"
    )
    cmp.add_argument(
        "--dataset", help="any registered dataset (default: the base config's, shapes)"
    )
    cmp.add_argument("--root", help="the dataset's folder")
    budget = cmp.add_mutually_exclusive_group()
    budget.add_argument("--iters", type=int, help="training iterations of every network")
    budget.add_argument("--seconds", type=float, help="wall-clock seconds of training per network")
    cmp.add_argument(
        "--recipes", action="store_true",
        help="train each network with configs/<model>_<dataset>.yaml where present",
    )  # fmt: skip
    cmp.add_argument("--config", help="shared base config (default: the demo's recipe)")
    cmp.add_argument("--split", help="--checkpoints: the split (default: their val split)")
    cmp.add_argument("--device", default="auto", help="--checkpoints: where to evaluate")
    cmp.add_argument("--rows", type=int, default=4, help="validation images in comparison.png")
    cmp.add_argument(
        "--seeds", type=int, default=1,
        help="train each network N times (train.seed s, s+1, ...); the table: mean ± sample std",
    )  # fmt: skip
    cmp.add_argument(
        "--set", action="append", default=[], dest="network_sets", metavar="NAME:key=value",
        help="a config override for one network of --models only, applied after the shared "
        "overrides and its recipe, e.g. --set enet:optim.lr=5e-4 (repeatable)",
    )  # fmt: skip
    cmp.add_argument(
        "overrides", nargs="*", metavar="key=value",
        help="config overrides for every network (data.batch_size=8), or one network's build "
        "option (unet.base_channels=16)",
    )  # fmt: skip

    plot = sub.add_parser(
        "plot", help="draw the curves of runs (loss, lr, val score, per-class IoU) into one PNG"
    )
    plot.add_argument("runs", nargs="+", metavar="RUN", help="run folders of `pixelwise train`")
    plot.add_argument("--out", default="curves.png", help="the PNG to write (default: curves.png)")
    plot.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    plot.add_argument(
        "--per-class-of", type=int, default=0, metavar="I",
        help="whose per-class IoU to draw: the I-th run given (default: 0, the first)",
    )  # fmt: skip

    datasets = sub.add_parser("datasets", help="list datasets, or check one on disk")
    dsub = datasets.add_subparsers(dest="action", metavar="ACTION")
    check = dsub.add_parser(
        "check", help="walk a dataset and report problems and the class histogram"
    )
    check.add_argument("name")
    check.add_argument("root")
    check.add_argument("--split", default="train")
    check.add_argument("--examples", type=int, default=5, help="examples shown per problem")
    check.add_argument(
        "overrides", nargs="*", metavar="key=value",
        help="dataset options, e.g. sbd_root=/data/benchmark_RELEASE (see `pixelwise datasets`)",
    )  # fmt: skip
    _add_download_commands(dsub)
    return parser


def _add_download_commands(dsub) -> None:
    """``datasets download`` and ``datasets prepare`` (pixelwise/data/download.py, prepare.py)."""
    get = dsub.add_parser(
        "download",
        help="download, verify and unpack a dataset from its owners, then check it",
        description="NAME is one of: voc, sbd, camvid, camvid32, ade20k, coco, coco_stuff, nyudv2, "
        "sunrgbd (cityscapes needs a login: see `datasets prepare`). Sources, sizes and checksums: "
        "docs/datasets.md.",
    )
    get.add_argument("name")
    get.add_argument("--root", help="the dataset root (default: its folder in the data home)")
    get.add_argument(
        "--mirror", metavar="URL", help="replaces every URL's host (default: $PIXELWISE_MIRROR)"
    )
    get.add_argument("--keep-archives", action="store_true", help="keep the verified archives")
    get.add_argument(
        "--no-extract", action="store_true", help="stop once the archives are verified"
    )
    get.add_argument(
        "--timeout", type=float, default=60.0, metavar="S",
        help="seconds without a byte before a download stops (run again to resume)",
    )  # fmt: skip
    prep = dsub.add_parser(
        "prepare", help="unpack archives you downloaded yourself (cityscapes), then check them"
    )
    prep.add_argument("name")
    prep.add_argument("--from", dest="archives", nargs="+", required=True, metavar="ARCHIVE")
    prep.add_argument("--root", help="the dataset root (default: its folder in the data home)")


def _add_progress(parser: argparse.ArgumentParser) -> None:
    shown = parser.add_mutually_exclusive_group()
    shown.add_argument(
        "--progress",
        choices=("auto", "bar", "lines"),
        default="auto",
        help="a live bar (loss terms, lr, images/s, time left), or one plain line every "
        "train.log_every steps; auto: a bar on a terminal, lines in a file or a cluster log",
    )
    shown.add_argument(
        "--quiet", action="store_true", help="neither bar nor step lines (scores and errors stay)"
    )


def _progress(args) -> str:
    return "quiet" if args.quiet else args.progress


def _add_tta(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--flip", action="store_true", help="average with the horizontal flip")
    parser.add_argument(
        "--scales", type=float, nargs="+", default=[1.0], help="multi-scale inference"
    )
    parser.add_argument("--crop", type=int, nargs=2, metavar=("H", "W"), help="sliding-window size")
    parser.add_argument(
        "--stride", type=int, nargs=2, metavar=("H", "W"), help="sliding-window stride"
    )
    parser.add_argument("--device", default="auto")


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    # Overrides may follow options (`train c.yaml --resume last.pt optim.lr=0.1`): argparse leaves
    # them over, and they are taken back here when they look like key=value.
    args, extra = parser.parse_known_args(argv)
    if extra:
        dashed = [e for e in extra if e.startswith("--") and "=" in e and "." in e.split("=")[0]]
        if dashed and hasattr(args, "overrides"):
            # `--optim.lr=1e-3` is how other tools spell an override; ours have no dashes.
            fixed = " ".join(e.lstrip("-") for e in dashed)
            print(
                f"error: {' '.join(dashed)}: config overrides take no dashes; write {fixed}.",
                file=sys.stderr,
            )
            return 2
        if not hasattr(args, "overrides") or any("=" not in e or e.startswith("-") for e in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides += extra
    try:
        return COMMANDS[args.command](args)
    except PixelwiseError as error:
        if args.debug:
            raise
        print(f"error: {_one_sentence(error)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # `pixelwise models | head`: the reader left. Point stdout at nothing so that Python's
        # flush at exit does not raise again, and end quietly as `cat` does.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except OSError as error:
        # A file system refusal naming a path (permissions, a full disk, a file where a folder
        # should be) is the user's to fix; an OSError without a path is a bug and keeps its traceback.
        if args.debug or error.filename is None:
            raise
        print(f"error: {_os_sentence(error)}", file=sys.stderr)
        return 2


def _os_sentence(error: OSError) -> str:
    """An OSError as one sentence: the path, the system's reason, and what to check."""
    reason = error.strerror or type(error).__name__
    return f"{error.filename}: {reason.lower()}; check that the path exists and that you may write there."


def _one_sentence(error: PixelwiseError) -> str:
    """The user's sentence, also when a DataLoader worker wrapped it in its traceback text."""
    text = str(error)
    if "Original Traceback" in text:
        last = [line for line in text.splitlines() if line.strip()][-1]
        text = last.split("PixelwiseError: ", 1)[-1]
    return text


# -- commands ----------------------------------------------------------------------------------
def cmd_demo(args) -> int:
    from pixelwise.config import load_config

    with resources.as_file(resources.files("pixelwise") / "configs" / "demo.yaml") as path:
        config = load_config(path, args.overrides)
    return _run_training(config, resume=None, progress=_progress(args))


def cmd_train(args) -> int:
    from pixelwise.config import load_config

    # With --resume the config file and overrides must agree with the run's own config except in
    # engine.run.RESUME_MAY_CHANGE (run length, reporting, data root, device); build_run checks.
    config = load_config(args.config, args.overrides)
    return _run_training(config, resume=args.resume, progress=_progress(args))


def _run_training(config, resume: str | None, progress: str = "auto") -> int:
    from pixelwise.engine.train import Trainer

    started = time.perf_counter()
    trainer = Trainer.from_config(config, resume=resume, progress=progress)
    if trainer.dist.is_main:
        print(
            f"training {config.model.name} on {config.data.dataset} ({len(trainer.train_set)} train / "
            f"{len(trainer.val_set)} val images) for {trainer.total_iters} iterations on "
            f"{trainer.device}; writing {trainer.run_dir}"
        )
        print(_intervals(config.train, trainer.iters_per_epoch))
        _warn_about_crop(config, trainer.train_set)
    scores = trainer.fit()
    trainer.close()  # under torchrun: leave the process group before the process exits
    if not trainer.dist.is_main:
        return 0
    if trainer.interrupted:
        print(
            f"stopped at step {trainer.step}; continue with: pixelwise train "
            f"{trainer.run_dir / 'config.yaml'} --resume {trainer.run_dir / 'last.pt'}"
        )
        return 130
    if scores is not None:
        print(scores.format(trainer.classes))  # the task's table (an instance run: COCO AP)
    print(
        f"best val {trainer.task.score_name} {100 * trainer.best_score:.2f} | {time.perf_counter() - started:.0f} s | "
        f"run folder {trainer.run_dir} (config.yaml, metrics.jsonl, train_log.jsonl, best.pt, last.pt, "
        "predictions.png, tensorboard/)"
    )
    return 0


def _intervals(train, iters_per_epoch: int) -> str:
    """The unit of every interval, said once at the start: eval_every counts epochs in an epochs
    recipe and iterations in an iterations one."""
    if train.epochs is not None:
        length = f"{train.epochs} epochs of {iters_per_epoch} iterations"
        every = f"validating every {train.eval_every} epoch(s)"
    else:
        length = f"{train.iters} iterations"
        every = f"validating every {train.eval_every} iteration(s)"
    return (
        f"length: {length} (train.{'epochs' if train.epochs is not None else 'iters'}); "
        f"{every} (train.eval_every); logging every {train.log_every} iteration(s) (train.log_every)"
    )


def _warn_about_crop(config, train_set) -> None:
    """One line on stderr when data.crop_size exceeds the training images (they are all padded)."""
    from pixelwise.data.transforms import crop_size_warning

    d = config.data
    warning = crop_size_warning(train_set, d.crop_size, resize=d.resize, scale_range=d.scale_range)
    if warning:
        print(warning, file=sys.stderr)


def _output_file(path: Path, flag: str, example: str, overwrite: bool) -> Path:
    """Check early that ``path`` may be written (not a folder; an existing file only with
    ``--overwrite``; its folder created), so no work is done for nothing."""
    from pixelwise.outputs import claim_output

    return claim_output(path, flag, overwrite=overwrite, example=example)


def _check_output_folder(path: Path, flag: str) -> None:
    """Refuse ``path`` as an output folder before any work, without creating it yet.

    The folder itself is made by :func:`_folder_for_outputs` once the work can start (the
    checkpoint loaded), so a refused checkpoint leaves nothing behind; the sentences are those
    of :func:`pixelwise.outputs.output_folder`.
    """
    if path.exists() and not path.is_dir():
        raise PixelwiseError(
            f"{flag} {path} is a file, not a folder; give a folder for the outputs."
        )
    nearest = path
    while not nearest.exists() and nearest != nearest.parent:
        nearest = nearest.parent
    if not nearest.is_dir():
        raise PixelwiseError(
            f"{flag} {path} cannot be created (not a directory); give a folder you may write to."
        )
    if not os.access(nearest, os.W_OK | os.X_OK):
        reason = "is not writable" if nearest == path else "cannot be created (permission denied)"
        raise PixelwiseError(f"{flag} {path} {reason}; give a folder you may write to.")


@contextmanager
def _folder_for_outputs(path: Path | None, flag: str) -> Iterator[Path | None]:
    """Create ``path`` (and missing parents) for the block's outputs; on the way out, whether the
    block succeeded or not, remove again the folders made here that were left empty.

    A command refused half-way (a bad dataset, a full disk, every image refused) so never leaves
    an empty folder the user did not have before. ``None`` passes through (an option not given).
    """
    if path is None:
        yield None
        return
    made = []  # the folders this call creates, deepest first
    folder = path
    while not folder.exists() and not folder.is_symlink() and folder != folder.parent:
        made.append(folder)
        folder = folder.parent
    try:
        yield _output_folder(path, flag)
    finally:
        for folder in made:
            try:
                folder.rmdir()  # removes an empty folder only
            except OSError:  # it holds outputs (or is gone): keep it and those above it
                break


def _tta(args):
    from pixelwise.engine.inference import check_tta
    from pixelwise.tasks.base import TTA

    check_tta(args.scales, args.crop, args.stride)
    return TTA(tuple(args.scales), args.flip, args.crop, args.stride)


def cmd_eval(args) -> int:
    from pixelwise.engine.eval_outputs import (
        check_label_ids_dataset,
        evaluate_loaded,
        json_safe,
        write_eval_outputs,
    )
    from pixelwise.engine.model_io import load_model
    from pixelwise.outputs import write_text
    from pixelwise.viz import plot_confusion

    tta = _tta(args)
    for flag, name, example in (
        ("--confusion", args.confusion, "confusion.png"),
        ("--json", args.json, "scores.json"),
    ):
        if name:
            _output_file(Path(name), flag, example, args.overwrite)
    # Output folders are checked now but made only once the checkpoint has loaded (and removed
    # again if the evaluation fails before writing into them): a refused checkpoint or dataset
    # leaves no empty folder behind. The default --out, the checkpoint's folder, exists by then.
    if args.out:
        _check_output_folder(Path(args.out), "--out")
    if args.save_label_ids:
        _check_output_folder(Path(args.save_label_ids), "--save-label-ids")
    loaded = load_model(args.checkpoint, args.device)
    tta = _fit_eval_memory(loaded, tta, args.split, args.root)
    out = Path(args.out) if args.out else Path(args.checkpoint).parent
    if args.save_label_ids:
        check_label_ids_dataset(loaded.config.data.dataset)
    ids_folder = Path(args.save_label_ids) if args.save_label_ids else None
    with _folder_for_outputs(ids_folder, "--save-label-ids") as label_ids:
        result = evaluate_loaded(
            loaded, split=args.split, root=args.root, tta=tta, label_ids=label_ids,
            score_at=args.score_at, progress=sys.stderr.isatty(),
        )  # fmt: skip
    print(
        f"{loaded.meta['model']} on {loaded.config.data.dataset} {result.split} "
        f"({len(result.dataset)} images), {result.scored_text()}"
    )
    print(result.report.format(loaded.classes))
    if args.confusion and hasattr(result.metric, "matrix"):
        plot_confusion(result.metric.matrix, loaded.classes, Path(args.confusion))
    if args.json:
        write_text(Path(args.json), json.dumps(json_safe(result.report.as_dict()), indent=2) + "\n")
    with _folder_for_outputs(out, "--out"):
        folder = write_eval_outputs(result, loaded, out, tta=tta, label_ids=label_ids)
    print(f"wrote {folder}: {', '.join(sorted(p.name for p in folder.iterdir()))}")
    if label_ids is not None:
        print(f"wrote {len(result.dataset)} labelIds files into {label_ids}")
    return 0


def cmd_predict(args) -> int:
    """Segment every image that can be read, and name every one that cannot.

    Each input is checked first (it exists, is a file, has an image header within the size
    limit); then the checkpoint loads; then each image is decoded (:func:`read_photo`: upright,
    damage refused) and segmented in turn, a refused one not stopping the others. After the
    first is written, one warning says how many images are far from the scale the network was
    trained at, and the fix (:mod:`pixelwise.engine.predict_scale`). The closing summary says
    how many were written and which were refused, and why.

    Returns:
        0 when every image was written; 1 when some were written and others refused, as
        ``datasets check`` answers data with problems; a :class:`PixelwiseError` (exit 2) when
        none could be. An output problem (``--out``, an existing file, a full disk) stops the
        whole command, since it would stop every image alike.
    """
    from pixelwise.data.base import image_size, read_photo
    from pixelwise.engine.model_io import load_model
    from pixelwise.engine.predict_scale import scale_warning, training_scale
    from pixelwise.tasks.base import PredictSettings

    settings = PredictSettings(_tta(args), args.score_threshold)
    images = [Path(name) for name in args.images]
    out = Path(args.out)
    _check_output_folder(out, "--out")
    refused = {i: problem for i, path in enumerate(images) if (problem := _input_problem(path))}
    if len(refused) == len(images):
        raise _none_written(images, refused)
    loaded = load_model(args.checkpoint, args.device)
    names = output_names(images)  # from every input, so a refused one never renames another
    # The task names what it writes for each image; none may replace a file without --overwrite.
    targets = {
        i: [out / f for f in loaded.task.prediction_files(names[i])]
        for i in range(len(images))
        if i not in refused
    }
    existing = [t for group in targets.values() for t in group if t.exists() or t.is_symlink()]
    if existing and not args.overwrite:
        more = f" and {len(existing) - 1} more" if len(existing) > 1 else ""
        raise PixelwiseError(
            f"{existing[0]}{more} already exist in --out {out}; pass --overwrite to replace them "
            "or choose another --out folder."
        )
    # Once for the whole call, after the first image is written (a request refused outright has
    # only its own sentence): how many images are far from the training scale, and the fix.
    # Sizes come from the headers (an EXIF turn keeps the short side).
    sizes = {}
    for i in targets:
        try:
            sizes[i] = image_size(images[i])
        except PixelwiseError:
            continue
    scale = training_scale(loaded.config, loaded.meta)
    warning = scale_warning(images, sizes, scale, settings.tta.scales)
    written = 0
    try:
        with _folder_for_outputs(out, "--out"):
            for i, paths in targets.items():
                try:
                    photo = read_photo(images[i])
                except PixelwiseError as error:
                    refused[i] = str(error)
                    continue
                for note in photo.notes:
                    print(f"warning: {note}", file=sys.stderr)
                loaded.write_prediction(photo.image, paths, replace(settings, image_id=i))
                written += 1
                print(f"{images[i]} -> {', '.join(str(p) for p in paths)}")
                if written == 1 and warning is not None:
                    print(f"warning: {warning}", file=sys.stderr)
    except PixelwiseError:
        # A problem of the outputs or the model (a full disk, a refused option) stops every
        # image alike; the inputs refused so far are still named before its sentence.
        if refused:
            _print_refused(images, refused, "then stopped by the error below")
        raise
    if not written:
        raise _none_written(images, refused)
    print(f"wrote {written} of {len(images)} images into {out}")
    if refused:
        _print_refused(images, refused, "exit status 1")
    return 1 if refused else 0


def _fit_eval_memory(loaded, tta, split: str | None, root: str | None):
    """``tta`` as it fits the memory for the split's first image (a split's images mostly share
    one size): unchanged, in sliding windows that fit (said on stderr), or refused in one
    sentence before the evaluation starts. Tasks without an estimate keep ``tta``."""
    from pixelwise.engine.evaluate import split_dataset

    fit = getattr(loaded.task, "fit_memory", None)
    if fit is None:
        return tta
    dataset, _ = split_dataset(loaded.config, split, root)
    if len(dataset) == 0:
        return tta
    image, label = loaded.task.eval_transforms()(*dataset[0])
    size = tuple(int(s) for s in label.shape[-2:])
    batch = loaded.config.data.val_batch_size
    return fit(loaded.inference, tuple(image.shape), size, tta, batch=batch)


def _input_problem(path: Path) -> str | None:
    """The sentence refusing ``path`` as an input of ``predict`` from its header alone, or None."""
    from pixelwise.data.base import image_size

    if path.is_dir():
        return f"{path} is a folder; give image files, e.g. {path / '*.png'}."
    if not path.exists():
        return f"Image {path} does not exist; check the path."
    try:
        image_size(path)
    except PixelwiseError as error:
        return str(error)
    return None


def _print_refused(images: Sequence[Path], refused: dict[int, str], outcome: str) -> None:
    print(f"refused {len(refused)} of {len(images)} images ({outcome}):", file=sys.stderr)
    for i in sorted(refused):
        print(f"  {refused[i]}", file=sys.stderr)


def _none_written(images: Sequence[Path], refused: dict[int, str]) -> PixelwiseError:
    """The error to raise when no image could be segmented: one input's own sentence; for
    several, this prints the list of every refusal first and the sentence points at it."""
    if len(images) == 1:
        return PixelwiseError(refused[0])
    _print_refused(images, refused, "none written")
    return PixelwiseError(
        f"None of the {len(images)} images could be segmented (each is named above with the "
        "reason); fix or replace them and run predict again."
    )


def output_names(images: Sequence[Path]) -> list[str]:
    """One distinct output name per input: the stem, made longer only where stems collide.

    ``a/x.png`` and ``b/x.png`` become ``a_x`` and ``b_x`` (their paths below the deepest common
    folder); ``x.png`` and ``x.jpg`` become ``x_png`` and ``x_jpg``; a file given twice gets
    ``-2``, ``-3`` ... so no output ever replaces another of the same call.
    """
    names = [p.stem for p in images]
    groups: dict[str, list[int]] = {}
    for i, name in enumerate(names):
        groups.setdefault(name, []).append(i)
    for members in groups.values():
        if len(members) < 2:
            continue
        paths = [images[i].resolve() for i in members]
        common = Path(os.path.commonpath(paths))
        relative = [p.relative_to(common) if p != common else Path(p.name) for p in paths]
        for keep_suffix in (False, True):
            longer = [
                "_".join((r if keep_suffix else r.with_suffix("")).parts).replace(".", "_")
                for r in relative
            ]
            if len(set(longer)) == len(longer):
                for i, name in zip(members, longer, strict=True):
                    names[i] = name
                break
    seen: dict[str, int] = {}
    for i, name in enumerate(names):
        seen[name] = seen.get(name, 0) + 1
        if seen[name] > 1:
            names[i] = f"{name}-{seen[name]}"
    return names


def cmd_models(args) -> int:
    import torch

    from pixelwise.models import build_model, list_models, model_info
    from pixelwise.models.complexity import count_flops, count_parameters
    from pixelwise.tasks import task_class

    if args.zoo:
        from pixelwise.convert.zoo import zoo_table

        print("\n".join(zoo_table()))
        return 0
    header = f"{'name':<24} {'task':<8} {'year':>4} {'params':>12}"
    header += f" {'GFLOPs':>9} {'at HxW':>9}" if args.flops else ""
    print(header + "  paper")
    for name in list_models():
        info = model_info(name)
        with torch.device("meta"):  # counts need shapes only: nothing is allocated or computed
            model = build_model(name, info.num_classes, **_paper_kwargs(info))
        line = f"{name:<24} {info.task:<8} {info.year:>4} {count_parameters(model):>12,}"
        if args.flops and not task_class(name).fixed_forward:
            # A detector's cost depends on how many proposals and detections an image yields
            # (and NMS cannot run on the meta device), DecoupledNet's on how many classes its
            # classifier detects (one decoder pass each): see docs/models.md.
            line += f" {'-':>9} {'-':<9}"
        elif args.flops:
            gflops = count_flops(model, info.input_size, info.in_channels) / 1e9
            line += f" {gflops:>9.1f} {info.input_size[0]}x{info.input_size[1]:<5}"
        print(f"{line}  {info.paper}")
        if hasattr(model, "parts"):  # a GAN: what each player holds (GAN-SS: D and G)
            shares = (f"{part} {count_parameters(m):,}" for part, m in model.parts().items())
            print(f"    = {', '.join(shares)}")
    print("params: learnable parameters at the paper's class count; GFLOPs = 2 x multiply-adds.")
    return 0


def cmd_convert(args) -> int:
    from pixelwise.convert.convert import convert_release

    out = convert_release(
        args.model, args.weights, args.out, prototxt=args.prototxt, overwrite=args.overwrite
    )
    print(f"wrote {out} ({args.model}); score it with: pixelwise eval --checkpoint {out}")
    return 0


def _paper_kwargs(info) -> dict:
    return {"in_channels": info.in_channels} if info.in_channels != 3 else {}


def cmd_bench(args) -> int:
    from pixelwise.bench import (
        BenchSettings,
        bench_models,
        bench_report,
        format_table,
        write_report,
    )
    from pixelwise.config import apply_overrides

    options: dict = {}
    apply_overrides(options, args.overrides, "bench")
    for key, value in options.items():
        if not isinstance(value, dict):
            raise PixelwiseError(
                f"Option {key}={value} names no network; write network.option=value, "
                "e.g. unet.padding=same."
            )
    json_path = (
        _output_file(Path(args.json), "--json", "bench.json", args.overwrite) if args.json else None
    )
    settings = BenchSettings(
        size=(args.size[0], args.size[1]), batch=args.batch, device=args.device, amp=args.amp,
        channels_last=args.channels_last, compile=args.compile, num_classes=args.classes,
        warmup=args.warmup, runs=args.runs, model_options=options,
    )  # fmt: skip
    names = [name.strip() for name in args.models.split(",") if name.strip()]
    if args.threads is not None:
        if args.threads < 1:
            raise PixelwiseError(f"--threads {args.threads} must be at least 1.")
        import torch

        torch.set_num_threads(args.threads)
    results = bench_models(names, settings)
    print(format_table(results, settings))
    if json_path is not None:
        command = "pixelwise " + " ".join(sys.argv[1:]) if sys.argv[1:] else None
        write_report(json_path, bench_report(results, settings, command))
        print(f"wrote {json_path}")
    failed = [r.model for r in results if r.error is not None]
    if failed:
        print(f"error: {', '.join(failed)} could not be measured; see the table.", file=sys.stderr)
        return 1
    return 0


def cmd_datasets(args) -> int:
    from pixelwise.data import dataset_class, list_datasets

    if args.action in ("download", "prepare"):
        return _download_or_prepare(args)
    if args.action == "check":
        from pixelwise.config import apply_overrides
        from pixelwise.data.check import check_dataset, format_report

        options: dict = {}
        apply_overrides(options, args.overrides, "datasets check")
        report = check_dataset(
            args.name, args.root, args.split, max_examples=args.examples, options=options
        )
        print(format_report(report))
        errors = report.problems["loader_error"]
        if errors.count:
            print(
                f"error: the {args.name} reader failed on {errors.count} samples in a way it should "
                f"not (first: {errors.examples[0]}); this is a bug in pixelwise, please report it.",
                file=sys.stderr,
            )
        return report.exit_code
    print(f"{'name':<20} {'task':<8} {'classes':>7}  {'splits':<52} options")
    for name in list_datasets():
        cls = dataset_class(name)
        count = str(len(cls.classes)) if cls.classes else "yours"
        splits, options = ", ".join(cls.splits), ", ".join(_options(cls)) or "-"
        print(f"{name:<20} {cls.task:<8} {count:>7}  {splits:<52} {options}")
    return 0


def _download_or_prepare(args) -> int:
    from pixelwise.data.download import download_dataset
    from pixelwise.data.prepare import prepare_dataset

    if args.action == "prepare":
        result = prepare_dataset(args.name, args.archives, args.root)
    else:
        result = download_dataset(
            args.name, args.root, mirror=args.mirror, keep_archives=args.keep_archives,
            extract=not args.no_extract, timeout=args.timeout,
        )  # fmt: skip
    for path in result.kept:
        print(f"kept {path}")
    print(f"{args.name} is in {result.root}")
    return result.exit_code


def _options(cls) -> list[str]:
    """The keyword-only options of a dataset class, as ``name=default``."""
    import inspect

    return [
        f"{p.name}={p.default!r}"
        for p in inspect.signature(cls.__init__).parameters.values()
        if p.kind is inspect.Parameter.KEYWORD_ONLY
    ]


def cmd_compare(args) -> int:
    from pixelwise.compare import (
        CompareSettings,
        run_comparison,
        split_network_options,
        split_network_sets,
    )
    from pixelwise.models import list_models

    overrides, options = split_network_options(args.overrides, list_models())
    settings = CompareSettings(
        models=_names(args.models), checkpoints=_names(args.checkpoints), dataset=args.dataset,
        root=args.root, iters=args.iters, seconds=args.seconds, recipes=args.recipes,
        config=args.config, overrides=overrides, model_options=options,
        network_overrides=split_network_sets(args.network_sets), split=args.split,
        device=args.device, rows=args.rows, seeds=args.seeds,
    )  # fmt: skip
    comparison = run_comparison(settings, args.out)
    print((Path(args.out) / "comparison.md").read_text().split("\n\n## ")[0])
    print(f"wrote {Path(args.out) / 'comparison.md'}, comparison.json, comparison.png "
          f"in {comparison.wall_seconds:.0f} s")  # fmt: skip
    return 0


def cmd_plot(args) -> int:
    from pixelwise.plot import plot_runs

    out = _output_file(Path(args.out), "--out", "curves.png", args.overwrite)
    plot_runs([Path(r) for r in args.runs], out, per_class_of=args.per_class_of)
    print(f"wrote {out}")
    return 0


def _names(text: str | None) -> list[str]:
    return [n.strip() for n in text.split(",") if n.strip()] if text else []


def cmd_export(args) -> int:
    from pixelwise.export import export_checkpoint

    example = "model.onnx" if args.format == "onnx" else "model.pt"
    out = _output_file(Path(args.out), "--out", example, args.overwrite)
    report = export_checkpoint(args.checkpoint, out, args.format, size=args.size, opset=args.opset)
    h, w = report.size
    print(
        f"wrote {report.path} ({args.format}, traced at {h}x{w} in {report.seconds:.1f} s, batch, "
        f"height and width dynamic); max |logits - PyTorch's| = {report.max_difference:.2g} on a "
        f"random {'x'.join(map(str, report.check_shape))} input"
        + (
            f" (above 1e-4, but float32 PyTorch is itself {report.float32_distance:.2g} from "
            "float64 PyTorch there, and the file is within twice that)"
            if report.float32_distance is not None
            else ""
        )
    )
    return 0


COMMANDS = {
    "demo": cmd_demo,
    "train": cmd_train,
    "eval": cmd_eval,
    "predict": cmd_predict,
    "models": cmd_models,
    "convert": cmd_convert,
    "bench": cmd_bench,
    "datasets": cmd_datasets,
    "export": cmd_export,
    "compare": cmd_compare,
    "plot": cmd_plot,
}

if __name__ == "__main__":
    sys.exit(main())
