"""Mutation check: does some test fail when the topology of a network is broken on purpose?

Each mutation is one source edit that keeps every shape and parameter count (a pooling type, a
dilation, a crop offset, a concatenation order, a skip connection, the unpooling indices, a
detached branch, a loss or metric term) together with the targeted tests that ought to see it.
The mutations are applied one at a time to a copy of the repository in a temporary folder (the
files ``git ls-files`` lists plus the untracked files git does not ignore, as they are in the
working tree now), never to the working tree itself; the tests run there with
``python -m pytest -q -x -p no:cacheprovider``. A mutation is *caught* when a test fails, and
*survived* when all pass: every survivor is a missing test. A mutation whose original text is not
found exactly once is an *error*, so the list has to follow the code.

Run on demand (not part of the test suite), e.g.::

    python tools/mutate.py                     # every family
    python tools/mutate.py --only fcn --only pspnet --json mutations.json
    python tools/mutate.py --list

Before the mutations of a family, its tests run once unmutated (``--no-baseline`` skips that): a
test that fails on the real code would make every mutation look caught.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: A targeted test run: a test file and an optional ``-k`` expression.
Target = tuple[str, str | None]


@dataclass(frozen=True)
class Mutation:
    family: str
    name: str  # what the mutation breaks, in a few words
    file: str
    original: str  # must occur exactly once in ``file``
    replacement: str
    tests: tuple[Target, ...]


def _stored(*names: str) -> Target:
    return ("tests/test_stored_logits.py", " or ".join(f"[{n}]" for n in names))


def _topology(keyword: str) -> Target:
    return ("tests/test_topology.py", keyword)


FCN = "pixelwise/models/fcn.py"
SEGNET = "pixelwise/models/segnet.py"
BACKBONES = "pixelwise/models/backbones.py"
UNET = "pixelwise/models/unet.py"
FCDENSENET = "pixelwise/models/fcdensenet.py"
ENET = "pixelwise/models/enet.py"
LINKNET = "pixelwise/models/linknet.py"
PSPNET = "pixelwise/models/pspnet.py"
REFINENET = "pixelwise/models/refinenet.py"
GFRNET = "pixelwise/models/gfrnet.py"
DECOUPLEDNET = "pixelwise/models/decouplednet.py"
GAN_SS_TASK = "pixelwise/tasks/gan_ss.py"
LOSSES = "pixelwise/losses.py"
METRICS = "pixelwise/metrics.py"

_FCN_TESTS = (_topology("fcn"), _stored("fcn32s", "fcn16s", "fcn8s", "fcn8s_atonce"))
_SEGNET_TESTS = (_stored("segnet", "segnet_basic"), ("tests/test_segnet.py", None))
_UNET_TESTS = (_stored("unet"), ("tests/test_unet.py", None))
_DENSE_TESTS = (
    _topology("fcdensenet"),
    _stored("fcdensenet56", "fcdensenet67"),
    ("tests/test_fcdensenet.py", None),
)
_ENET_TESTS = (_topology("enet"), _stored("enet"), ("tests/test_enet.py", None))
_LINKNET_TESTS = (_stored("linknet"), ("tests/test_linknet.py", None))
_PSPNET_TESTS = (_stored("pspnet50"), ("tests/test_pspnet.py", None))
_REFINENET_TESTS = (_stored("refinenet50"), ("tests/test_refinenet.py", None))
_GFRNET_TESTS = (_stored("gfrnet"), ("tests/test_gfrnet.py", None))
_DECOUPLED_TESTS = (
    _topology("decouplednet"),
    ("tests/test_decouplednet_inference.py", None),
    ("tests/test_decouplednet.py", "stored or class_specific or training_forward"),
)
_GAN_TESTS = (_topology("gan_ss"), ("tests/test_gan_ss.py", "losses or supervised or unlabelled"))
_LOSS_TESTS = (("tests/test_losses.py", None),)
_METRIC_TESTS = (("tests/test_metrics.py", None),)

MUTATIONS: tuple[Mutation, ...] = (
    # -- FCN: Caffe's crop offsets and the skips ------------------------------------------------
    Mutation("fcn", "fcn32s final crop offset 19 -> 0", FCN,
             "return crop_like(self.upscore(score), 19, x)",
             "return crop_like(self.upscore(score), 0, x)", _FCN_TESTS),
    Mutation("fcn", "fcn8s final crop offset 31 -> 0", FCN,
             "return crop_like(self.upscore8(score), 31, x)",
             "return crop_like(self.upscore8(score), 0, x)", _FCN_TESTS),
    Mutation("fcn", "score_pool4 crop offset 5 -> 0", FCN,
             "_scaled(pool4, self.pool4_scale)), 5, score)",
             "_scaled(pool4, self.pool4_scale)), 0, score)", _FCN_TESTS),
    Mutation("fcn", "pool3 skip removed", FCN,
             "score = score + crop_like(self.score_pool3(",
             "score = score + 0 * crop_like(self.score_pool3(", _FCN_TESTS),
    # -- SegNet: unpooling with the encoder's indices ----------------------------------------------
    Mutation("segnet", "unpooling by nearest upsampling, indices ignored", SEGNET,
             "x = F.max_unpool2d(x, index, 2, 2, output_size=size)",
             "x = F.interpolate(x, size=size, mode='nearest')", _SEGNET_TESTS),
    Mutation("segnet", "encoder pools average (indices still from max)", BACKBONES,
             "x, index = F.max_pool2d(x, 2, 2, ceil_mode=self.ceil_mode, return_indices=True)",
             "index = F.max_pool2d(x, 2, 2, ceil_mode=self.ceil_mode, return_indices=True)[1]; "
             "x = F.avg_pool2d(x, 2, 2, ceil_mode=self.ceil_mode)", _SEGNET_TESTS),
    # -- U-Net ------------------------------------------------------------------------------------
    Mutation("unet", "concatenation [x, skip] instead of [skip, x]", UNET,
             "return self.conv(torch.cat([skip, x], dim=1))",
             "return self.conv(torch.cat([x, skip], dim=1))", _UNET_TESTS),
    Mutation("unet", "max pooling -> average pooling", UNET,
             "self.pool = nn.MaxPool2d(2, 2, ceil_mode=True)",
             "self.pool = nn.AvgPool2d(2, 2, ceil_mode=True)", _UNET_TESTS),
    Mutation("unet", "skip connections zeroed", UNET,
             "x = decoder(x, skip)", "x = decoder(x, torch.zeros_like(skip))", _UNET_TESTS),
    # -- FC-DenseNet ------------------------------------------------------------------------------
    Mutation("fcdensenet", "transition up concatenates [skip, up]", FCDENSENET,
             "return torch.cat([up, skip], dim=1)",
             "return torch.cat([skip, up], dim=1)", _DENSE_TESTS),
    Mutation("fcdensenet", "dense layer reads its inputs in reverse order", FCDENSENET,
             "return self.conv(self.relu(self.norm(torch.cat(features, dim=1))))",
             "return self.conv(self.relu(self.norm(torch.cat(features[::-1], dim=1))))",
             _DENSE_TESTS),
    Mutation("fcdensenet", "transition down max pool -> average pool", FCDENSENET,
             "nn.MaxPool2d(2),", "nn.AvgPool2d(2),", _DENSE_TESTS),
    # -- ENet -------------------------------------------------------------------------------------
    Mutation("enet", "dilated bottlenecks undilated", ENET,
             "return nn.Conv2d(channels, channels, 3, padding=dilation, dilation=dilation)",
             "return nn.Conv2d(channels, channels, 3, padding=1, dilation=1)", _ENET_TESTS),
    Mutation("enet", "decoder skip unpooled by nearest, indices ignored", ENET,
             "skip = self.unpool(self.skip(x), indices, output_size)",
             "skip = F.interpolate(self.skip(x), size=output_size, mode='nearest')",
             _ENET_TESTS),
    Mutation("enet", "initial block concatenates [pool, conv]", ENET,
             "torch.cat([self.conv(x), self.pool(x)], dim=1)",
             "torch.cat([self.pool(x), self.conv(x)], dim=1)", _ENET_TESTS),
    # -- LinkNet ----------------------------------------------------------------------------------
    Mutation("linknet", "encoder-decoder skip (sum) removed", LINKNET,
             "y = F.relu(skip + block(y, skip.shape[-2:]), inplace=True)",
             "y = F.relu(block(y, skip.shape[-2:]), inplace=True)", _LINKNET_TESTS),
    Mutation("linknet", "final crop shifted by one pixel", LINKNET,
             "return y[..., :height, :width]",
             "return y[..., y.shape[-2] - height :, y.shape[-1] - width :]", _LINKNET_TESTS),
    # -- PSPNet (tests/test_pspnet.py has tests for each) ----------------------------------------
    Mutation("pspnet", "pyramid max pooling instead of average", PSPNET,
             "pool=nn.AdaptiveAvgPool2d(b),", "pool=nn.AdaptiveMaxPool2d(b),", _PSPNET_TESTS),
    Mutation("pspnet", "aux branch detached from res4", PSPNET,
             "[_upsample(self.aux_head(res4), size)]",
             "[_upsample(self.aux_head(res4.detach()), size)]", _PSPNET_TESTS),
    Mutation("pspnet", "pyramid order coarsest first", PSPNET,
             "for branch in reversed(self.branches)", "for branch in self.branches",
             _PSPNET_TESTS),
    Mutation("pspnet", "output stride 16 (layer3 undilated)", PSPNET,
             "depth, output_stride=8, deep_stem=deep_stem",
             "depth, output_stride=16, deep_stem=deep_stem", _PSPNET_TESTS),
    # -- RefineNet --------------------------------------------------------------------------------
    Mutation("refinenet", "chained pooling not chained (each block pools the input)", REFINENET,
             "path = conv(self.pool(path))", "path = conv(self.pool(x))", _REFINENET_TESTS),
    Mutation("refinenet", "fusion drops the coarse path", REFINENET,
             "return fine + coarse", "return fine + 0 * coarse", _REFINENET_TESTS),
    Mutation("refinenet", "RCU identity dropped", REFINENET,
             "return x + y", "return y", _REFINENET_TESTS),
    # -- G-FRNet ----------------------------------------------------------------------------------
    Mutation("gfrnet", "gate sums instead of multiplying", GFRNET,
             "gate = projected * _resize(deeper, projected.shape[-2:])",
             "gate = projected + _resize(deeper, projected.shape[-2:])", _GFRNET_TESTS),
    Mutation("gfrnet", "refinement concatenation order swapped", GFRNET,
             "parts = (prediction, gate) if self.prediction_first else (gate, prediction)",
             "parts = (gate, prediction) if self.prediction_first else (prediction, gate)",
             _GFRNET_TESTS),
    # -- DecoupledNet -----------------------------------------------------------------------------
    Mutation("decouplednet", "inference weights by sigmoid(max score) instead of mean",
             DECOUPLEDNET, "return torch.sigmoid(feats.class_logits.detach())",
             "return torch.sigmoid(feats.score_map.detach().amax(dim=(2, 3)))",
             _DECOUPLED_TESTS),
    Mutation("decouplednet", "training weights by sigmoid(mean score) instead of max",
             DECOUPLEDNET, "return torch.sigmoid(feats.score_map.detach().amax(dim=(2, 3)))",
             "return torch.sigmoid(feats.class_logits.detach())", _DECOUPLED_TESTS),
    Mutation("decouplednet", "class map unpooled by nearest, pool argmax ignored", DECOUPLEDNET,
             "x = F.max_unpool2d(x, index[image], 2, 2, output_size=size)",
             "x = F.interpolate(x, size=size, mode='nearest')", _DECOUPLED_TESTS),
    # -- GAN-SS -----------------------------------------------------------------------------------
    Mutation("gan_ss", "D loss drops the real (unlabelled) term", GAN_SS_TASK,
             'd_loss = terms["d_supervised"] + terms["d_real"] + terms["d_fake"]',
             'd_loss = terms["d_supervised"] + terms["d_fake"]', _GAN_TESTS),
    Mutation("gan_ss", "real term only over the labelled images", GAN_SS_TASK,
             '"d_real": real_loss(real_logits),',
             '"d_real": real_loss(real_logits[(mask != 255).flatten(1).any(1)]),', _GAN_TESTS),
    Mutation("gan_ss", "D loss drops the fake term", GAN_SS_TASK,
             'd_loss = terms["d_supervised"] + terms["d_real"] + terms["d_fake"]',
             'd_loss = terms["d_supervised"] + terms["d_real"]', _GAN_TESTS),
    # -- loss and metric --------------------------------------------------------------------------
    Mutation("loss", "weighted loss divided by every pixel, ignored ones too", LOSSES,
             "return total / valid.sum()", "return total / target.numel()", _LOSS_TESTS),
    Mutation("loss", "bootstrapping ranks ignored pixels too", LOSSES,
             "valid = (target != self.ignore_index).flatten(1)",
             "valid = torch.ones_like(target, dtype=torch.bool).flatten(1)", _LOSS_TESTS),
    Mutation("metric", "IoU denominator without the intersection removed", METRICS,
             "union = true_pixels + predicted - hits", "union = true_pixels + predicted",
             _METRIC_TESTS),
    Mutation("metric", "ignore index counted (device path)", METRICS,
             "valid = (target >= 0) & (target < c) & (target != ignore_index)",
             "valid = (target >= 0) & (target < c)", _METRIC_TESTS),
    Mutation("metric", "absent classes counted as IoU 0", METRICS,
             "iou = torch.where(union > 0, hits / union.clamp(min=1), nan)",
             "iou = hits / union.clamp(min=1)", _METRIC_TESTS),
)  # fmt: skip


@dataclass
class Result:
    family: str
    name: str
    file: str
    status: str  # caught | survived | error
    caught_by: str = ""
    seconds: float = 0.0
    detail: str = ""
    tests: list[str] = field(default_factory=list)


def copy_repository(destination: Path) -> None:
    """The tracked files and the untracked, not ignored ones, as they are in the working tree."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT, check=True, capture_output=True, text=True,
    ).stdout.split("\0")  # fmt: skip
    for name in filter(None, listed):
        source = ROOT / name
        if not source.is_file():  # deleted in the working tree
            continue
        target = destination / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target)


def _environment(copy: Path) -> dict[str, str]:
    environment = dict(os.environ)
    environment["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(copy), environment.get("PYTHONPATH")])
    )
    environment.setdefault("OMP_NUM_THREADS", "1")
    return environment


def run_tests(copy: Path, targets: tuple[Target, ...], timeout: float) -> tuple[bool, str, str]:
    """(all passed, the failing target, the tail of its output); stops at the first failure."""
    for path, keyword in targets:
        command = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", path]
        if keyword:
            command += ["-k", keyword]
        label = path + (f" -k '{keyword}'" if keyword else "")
        try:
            done = subprocess.run(
                command, cwd=copy, env=_environment(copy), capture_output=True, text=True,
                timeout=timeout,
            )  # fmt: skip
        except subprocess.TimeoutExpired:
            return False, label, f"timed out after {timeout:.0f} s"
        if done.returncode == 5:  # no test selected: the target list is out of date
            return False, label, "no tests selected"
        if done.returncode != 0:
            failed = [line for line in done.stdout.splitlines() if line.startswith("FAILED")]
            return False, label, "\n".join(failed[:3]) or done.stdout[-600:]
    return True, "", ""


def _check_import(copy: Path) -> None:
    where = subprocess.run(
        [sys.executable, "-c", "import pixelwise, sys; sys.stdout.write(pixelwise.__file__)"],
        cwd=copy, env=_environment(copy), capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    if not Path(where).resolve().is_relative_to(copy.resolve()):
        raise SystemExit(f"the copy imports pixelwise from {where}, not from {copy}; stopping")


def mutate(copy: Path, mutation: Mutation, timeout: float) -> Result:
    result = Result(mutation.family, mutation.name, mutation.file, "error")
    result.tests = [p + (f" -k '{k}'" if k else "") for p, k in mutation.tests]
    path = copy / mutation.file
    original = path.read_text()
    found = original.count(mutation.original)
    if found != 1:
        result.detail = f"original text found {found} times in {mutation.file}"
        return result
    start = time.monotonic()
    path.write_text(original.replace(mutation.original, mutation.replacement))
    try:
        passed, failing, tail = run_tests(copy, mutation.tests, timeout)
    finally:
        path.write_text(original)
    result.seconds = round(time.monotonic() - start, 1)
    if passed:
        result.status = "survived"
    elif tail in ("no tests selected",) or tail.startswith("timed out"):
        result.detail = f"{failing}: {tail}"
    else:
        result.status, result.caught_by, result.detail = "caught", failing, tail
    return result


def print_table(results: list[Result]) -> None:
    rows = [("family", "mutation", "status", "caught by / detail", "s")]
    for r in results:
        rows.append((r.family, r.name, r.status.upper() if r.status != "caught" else r.status,
                     r.caught_by or r.detail, f"{r.seconds:.0f}"))  # fmt: skip
    widths = [min(max(len(row[i]) for row in rows), 60) for i in range(4)]
    for row in rows:
        cells = [row[i].splitlines()[0][:60].ljust(widths[i]) if row[i] else " " * widths[i]
                 for i in range(4)]  # fmt: skip
        print("  ".join(cells), row[4].rjust(4))
    counts = {s: sum(r.status == s for r in results) for s in ("caught", "survived", "error")}
    print(", ".join(f"{n} {s}" for s, n in counts.items()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    families = sorted({m.family for m in MUTATIONS})
    parser.add_argument("--only", action="append", choices=families, help="a family (repeat)")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--list", action="store_true", help="list the mutations and stop")
    parser.add_argument("--no-baseline", action="store_true", help="skip the unmutated runs")
    parser.add_argument("--timeout", type=float, default=600, help="seconds per test run")
    args = parser.parse_args(argv)
    chosen = [m for m in MUTATIONS if not args.only or m.family in args.only]
    if args.list:
        for m in chosen:
            print(f"{m.family:12s} {m.name}  ({m.file})")
        return 0
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="pixelwise-mutate-") as folder:
        copy = Path(folder) / "repo"
        copy_repository(copy)
        _check_import(copy)
        for family in dict.fromkeys(m.family for m in chosen):
            mutations = [m for m in chosen if m.family == family]
            if not args.no_baseline:
                targets = tuple(dict.fromkeys(t for m in mutations for t in m.tests))
                passed, failing, tail = run_tests(copy, targets, args.timeout)
                if not passed:
                    print(f"{family}: the unmutated code fails {failing}:\n{tail}", flush=True)
                    for m in mutations:
                        results.append(Result(m.family, m.name, m.file, "error",
                                              detail=f"baseline fails: {failing}"))  # fmt: skip
                    continue
            for mutation in mutations:
                result = mutate(copy, mutation, args.timeout)
                print(f"{result.family:12s} {result.status:8s} {result.name}"
                      f"  {result.caught_by or result.detail}".rstrip(), flush=True)  # fmt: skip
                results.append(result)
    print()
    print_table(results)
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=1) + "\n")
    return 1 if any(r.status == "error" for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
