"""SyncBatchNorm under gloo: 2 CPU processes at batch B/2 train as 1 process at batch B."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from pixelwise.engine.sync_bn import SyncBatchNorm, convert_sync_batchnorm

BATCH, STEPS = 8, 3


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
        nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4, momentum=None), nn.ReLU(),
        nn.Conv2d(4, 3, 1),
    )  # fmt: skip


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(BATCH, 3, 6, 6, generator=generator) * 2 + 1
    y = torch.randint(0, 3, (BATCH, 6, 6), generator=generator)
    return x, y


def _train(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for _ in range(STEPS):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()


def _worker(rank: int, world: int, store: str, out: str, sync: bool) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        model = _model()
        if sync:
            model = convert_sync_batchnorm(model)
        net = nn.parallel.DistributedDataParallel(model)
        x, y = _data()
        half = BATCH // world
        _train(net, x[rank * half : (rank + 1) * half], y[rank * half : (rank + 1) * half])
        if rank == 0:
            model.eval()
            torch.save({"state": model.state_dict(), "eval": model(_data()[0])}, out)
    finally:
        dist.destroy_process_group()


def _two_processes(tmp_path: Path, sync: bool) -> dict:
    out = tmp_path / f"out-{sync}.pt"
    store = tmp_path / f"store-{sync}"
    # fork: the children need no fresh import of torch (seconds); they touch no CUDA.
    mp.start_processes(_worker, args=(2, str(store), str(out), sync), nprocs=2, start_method="fork")
    return torch.load(out, weights_only=True)


@pytest.fixture(scope="module")
def reference() -> dict:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    model = _model()
    _train(model, *_data())
    model.eval()
    with torch.no_grad():
        result = {"state": model.state_dict(), "eval": model(_data()[0])}
    torch.set_num_threads(before)
    return result


def _max_difference(a: dict, b: dict) -> float:
    diffs = [
        (a["state"][k].double() - b["state"][k].double()).abs().max().item() for k in a["state"]
    ]
    return max(*diffs, (a["eval"] - b["eval"]).abs().max().item())


def test_two_processes_with_sync_bn_end_where_one_process_at_twice_the_batch_ends(
    tmp_path, reference
):
    synced = _two_processes(tmp_path, sync=True)
    assert synced["state"].keys() == reference["state"].keys()  # checkpoints load either way
    assert _max_difference(synced, reference) < 1e-5
    assert torch.equal(
        synced["state"]["4.num_batches_tracked"], reference["state"]["4.num_batches_tracked"]
    )


def test_without_sync_the_same_run_ends_elsewhere(tmp_path, reference):
    """The tolerance above is tight enough to see per-process statistics."""
    assert _max_difference(_two_processes(tmp_path, sync=False), reference) > 1e-3


def test_single_process_and_eval_behave_as_batchnorm():
    x, _ = _data()
    plain = _model()
    converted = convert_sync_batchnorm(_model())
    assert isinstance(converted[1], SyncBatchNorm)
    assert torch.equal(plain(x), converted(x))  # no process group: plain batch norm
    plain.eval()
    converted.eval()
    assert torch.equal(plain(x), converted(x))
