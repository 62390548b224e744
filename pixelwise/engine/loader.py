"""Data loading that is reproducible across workers, processes and resumes.

Each epoch's order is a permutation drawn from ``(seed, epoch)``, sharded across distributed ranks,
and every sample's augmentation is drawn from its own seed ``(seed, epoch, position)``. So the
batches and augmentations of step k are the same whether a run went straight through, was resumed
at any step, or used any number of loader workers.
"""

from __future__ import annotations

import atexit
import signal
import threading
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler, default_collate

from pixelwise.errors import PixelwiseError

Transform = Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]


class EpochBatchSampler(Sampler[list[tuple[int, int]]]):
    """Batches of ``(index, sample_seed)`` for one epoch, starting at batch ``start``.

    Args:
        size: samples in the dataset.
        batch_size: per process.
        seed, epoch: what the permutation is drawn from.
        shuffle: False keeps the dataset order (evaluation).
        drop_last: drop the last incomplete batch (training, so BN never sees a batch of 1).
        rank, world_size: this process's shard of a distributed run.
        start: batches to skip (resuming in the middle of an epoch).
    """

    def __init__(
        self,
        size: int,
        batch_size: int,
        *,
        seed: int = 0,
        epoch: int = 0,
        shuffle: bool = True,
        drop_last: bool = True,
        rank: int = 0,
        world_size: int = 1,
        start: int = 0,
    ) -> None:
        self.size, self.batch_size = size, batch_size
        self.seed, self.epoch, self.shuffle, self.drop_last = seed, epoch, shuffle, drop_last
        self.rank, self.world_size, self.start = rank, world_size, start

    def _shard(self) -> list[int]:
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            order = torch.randperm(self.size, generator=generator).tolist()
        else:
            order = list(range(self.size))
        if self.world_size > 1 and self.drop_last:
            # In training every rank gets the same number of samples (as DistributedSampler does, by
            # wrapping); evaluation shards without repeats so no image is counted twice.
            per_rank = -(-self.size // self.world_size)
            order = (order * 2)[: per_rank * self.world_size]
        return order[self.rank :: self.world_size]

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        shard = self._shard()
        for b in range(self.start, len(self)):
            positions = range(b * self.batch_size, min((b + 1) * self.batch_size, len(shard)))
            base = (self.seed * 1_000_003 + self.epoch) * 10_000_019
            yield [(shard[p], base + p * self.world_size + self.rank) for p in positions]

    def __len__(self) -> int:
        n = len(self._shard())
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)


class SeededTransforms(Dataset):
    """Wraps a dataset whose items are ``(index, seed)``: seeds torch's RNG, then transforms."""

    def __init__(self, dataset: Dataset, transforms: Transform | None) -> None:
        self.dataset = dataset
        self.transforms = transforms

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, item: tuple[int, int]) -> tuple[Any, Any]:
        index, seed = item
        image, mask = self.dataset[index]
        if self.transforms is None:
            return image, mask
        state = torch.get_rng_state()
        torch.manual_seed(seed)
        try:
            return self.transforms(image, mask)
        finally:
            torch.set_rng_state(
                state
            )  # in the main process (workers=0) leave the caller's RNG as it was


def collate(batch: list[tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor]:
    """Stack a batch; images of different sizes get an error that says how to batch them."""
    sizes = {tuple(image.shape[-2:]) for image, _ in batch}
    if len(sizes) > 1:
        raise PixelwiseError(
            f"A batch holds images of different sizes {sorted(sizes)[:3]}; set data.crop_size or "
            "data.resize for training, or data.val_batch_size=1 for evaluation."
        )
    return default_collate(batch)


_STOP_SIGNALS = frozenset({signal.SIGINT, signal.SIGTERM})


def ignore_stop_signals(worker_id: int) -> None:
    """Workers leave SIGINT/SIGTERM to the main process.

    A scheduler signals the whole process group; a worker that died of it would take the run down
    ("DataLoader worker killed") before the main process finished its step and saved ``last.pt``.
    A worker is forked with the stop signals blocked (:func:`_stop_signals_blocked`), so one that
    arrives before this runs waits, and is dropped once ignored here; unblocking after that lets
    nothing through. The main process stops its workers itself: when it stops iterating, and at exit
    (:func:`_shutdown_live_workers`), since multiprocessing's own exit handler stops them by SIGTERM.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)


@contextmanager
def _stop_signals_blocked() -> Iterator[None]:
    """Hold SIGINT/SIGTERM back from this thread while it forks loader workers.

    A forked worker runs torch's set-up before its ``worker_init_fn``; a signal to the process group
    in that window used to kill it (about one stop in six with two workers). A child inherits the
    blocked mask, so the signal waits until :func:`ignore_stop_signals` has made it harmless; the
    main process gets its own signal when the mask is restored (or at once on another thread).
    """
    if threading.current_thread() is not threading.main_thread():
        yield  # only the main thread handles signals in Python; nothing to hold back
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


# Iterators and worker processes of this process's loaders. Multiprocessing's exit handler stops
# leftover workers by SIGTERM, which ours ignore, and then waits for them forever; an iterator kept
# alive by a traceback (an error raised in a worker, `--debug`) would leave such workers behind.
_live_iterators: weakref.WeakSet = weakref.WeakSet()
_worker_processes: weakref.WeakSet = weakref.WeakSet()
_exit_handler_registered = False


def _shutdown_live_workers() -> None:
    """At exit: stop live iterators' workers the DataLoader way, then kill any worker left over."""
    for iterator in list(_live_iterators):
        shutdown = getattr(iterator, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()
    for process in list(_worker_processes):
        if process.is_alive():
            process.kill()
            process.join(timeout=5)


class _Loader(DataLoader):
    """A DataLoader whose worker iterators are tracked for :func:`_shutdown_live_workers`."""

    def _get_iterator(self):
        global _exit_handler_registered
        if self.num_workers == 0:
            return super()._get_iterator()
        with _stop_signals_blocked():  # the workers start here
            iterator = super()._get_iterator()
        if not _exit_handler_registered:
            # Registered after multiprocessing's handler, so (last in, first out) it runs first.
            atexit.register(_shutdown_live_workers)
            _exit_handler_registered = True
        _live_iterators.add(iterator)
        _worker_processes.update(getattr(iterator, "_workers", []))
        return iterator


def make_loader(
    dataset: Dataset,
    transforms: Transform | None,
    sampler: EpochBatchSampler,
    num_workers: int,
    pin_memory: bool = False,
    collate_fn: Callable[[list[Any]], Any] = collate,
    *,
    persistent: bool = False,
) -> DataLoader:
    """A DataLoader over ``(index, seed)`` batches that never touches the global RNG.

    With ``persistent`` its workers live from one pass to the next (the training loop moves the
    sampler to the next epoch instead of building a loader per epoch); :func:`close_loader` stops
    them.

    Without its own ``generator`` a DataLoader draws its workers' base seed from torch's global
    RNG each time an iterator starts, so a run resumed mid-epoch (a new iterator where the straight
    run had none) would shift dropout and every later draw. Every sample is seeded by the sampler,
    so the generator's value itself does not matter; a fixed seed keeps workers reproducible.
    """
    return _Loader(
        SeededTransforms(dataset, transforms),
        batch_sampler=sampler,
        collate_fn=collate_fn,
        num_workers=num_workers,
        pin_memory=pin_memory,
        persistent_workers=persistent and num_workers > 0,
        generator=torch.Generator().manual_seed(sampler.seed * 100_003 + sampler.epoch),
        worker_init_fn=ignore_stop_signals if num_workers > 0 else None,
    )


def close_loader(loader: DataLoader) -> None:
    """Stop a persistent loader's workers now rather than when the loader is collected."""
    iterator = getattr(loader, "_iterator", None)
    shutdown = getattr(iterator, "_shutdown_workers", None)
    if shutdown is not None:
        shutdown()
    loader._iterator = None
