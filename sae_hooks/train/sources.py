"""Where training rows come from: a store, rows in memory, or a live model.

The trainer needs four things of a source, whatever it is: the width d, loaders
of (batch_size, d) batches for the "train" and "val" splits (resumable through
state_dict / load_state_dict), a sample of rows for initialisation, and, when
known without reading data, E||x||^2 for the normalisation.

    as_source(obj, point)   a store URL or ActivationStore (+ point), an
                            ActivationLoader, a (N, d) tensor, or a RowSource
    StoreSource             zarr store through sae_hooks.store.ActivationLoader
    TensorSource            rows already in memory (small runs, tests, notebooks)
    ModelSource             live capture through a shuffle buffer, nothing on disk
    TensorPairSource,       (input, target) rows for a transcoder: each batch is a
    StorePairSource         RowPair (x, y), d_model is the input's width
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import torch

from sae_hooks.activations import Batch, RowPair, n_rows, take_rows
from sae_hooks.distributed import share_of

if TYPE_CHECKING:
    from sae_hooks.store import StoreReader


@runtime_checkable
class Loader(Protocol):
    """One pass over a split, resumable mid-pass: batches of rows (N, d), or RowPairs."""

    def __iter__(self) -> Iterator[Batch]: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...


@runtime_checkable
class RowSource(Protocol):
    d_model: int

    def loader(self, split: str, batch_size: int, *, seed: int) -> Loader: ...
    def sample(self, n: int, *, seed: int) -> Batch: ...
    def mean_sq_norm(self) -> float | None: ...


def check_finite(rows: torch.Tensor, what: str) -> None:
    """Refuse NaN/inf before they reach the weights (a store's writer refuses them too)."""
    bad = ~torch.isfinite(rows)
    if bad.any():
        n_rows = int(bad.any(-1).sum())
        raise ValueError(
            f"{what}: {int(bad.sum())} NaN/inf values in {n_rows} of {rows.shape[0]} rows; "
            "refusing to train on them (check the model's dtype for overflow, or drop the rows)"
        )


# ------------------------------------------------------------------------- in memory


class TensorSource:
    """Rows held in memory, split once (seeded) into train and val.

    The split, loaders and sample take rows (N, d) or a RowPair alike (TensorPairSource).
    """

    def __init__(self, rows: torch.Tensor, *, val_fraction: float = 0.1, split_seed: int = 0):
        _check_rows(rows, val_fraction)
        check_finite(rows, "TensorSource rows")
        self._split(rows, val_fraction, split_seed)
        self.d_model = rows.shape[1]

    def _split(self, rows: Batch, val_fraction: float, split_seed: int) -> None:
        n = n_rows(rows)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(split_seed))
        n_val = round(val_fraction * n)
        val, train = order[:n_val], order[n_val:]
        self._splits = {"val": take_rows(rows, val), "train": take_rows(rows, train)}

    def loader(self, split: str, batch_size: int, *, seed: int) -> TensorLoader:
        _check_split(split)
        return TensorLoader(self._splits[split], batch_size, seed=seed, shuffle=split == "train")

    def sample(self, n: int, *, seed: int) -> Batch:
        rows = self._splits["train"]
        pick = torch.randperm(n_rows(rows), generator=torch.Generator().manual_seed(seed))[:n]
        return take_rows(rows, pick)

    def mean_sq_norm(self) -> float | None:
        return None


def _check_rows(rows: torch.Tensor, val_fraction: float) -> None:
    """Floating rows (N >= 1, d) and a held-out fraction in [0, 1)."""
    if not isinstance(rows, torch.Tensor) or rows.dim() != 2 or not rows.is_floating_point():
        got = tuple(rows.shape) if isinstance(rows, torch.Tensor) else type(rows).__name__
        raise ValueError(f"TensorSource expects floating rows of shape (N, d), got {got}")
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if rows.shape[0] == 0:
        raise ValueError("TensorSource got no rows (shape (0, d)): there is nothing to train on")


class TensorLoader:
    """Full batches in a seeded order that is a pure function of (seed, epoch); of rows
    (N, d), or of both sides of a RowPair in step."""

    def __init__(self, rows: Batch, batch_size: int, *, seed: int, shuffle: bool):
        self.rows, self.batch_size, self.seed, self.shuffle = rows, batch_size, seed, shuffle
        self.epoch, self.batch = 0, 0

    def __len__(self) -> int:
        return n_rows(self.rows) // self.batch_size

    def __iter__(self) -> Iterator[Batch]:
        n = n_rows(self.rows)
        if self.shuffle:
            order = torch.randperm(
                n, generator=torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            )
        else:
            order = torch.arange(n)
        while self.batch < len(self):
            i = self.batch
            self.batch += 1
            yield take_rows(self.rows, order[i * self.batch_size : (i + 1) * self.batch_size])
        self.epoch, self.batch = self.epoch + 1, 0

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "batch": self.batch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch, self.batch = int(state["epoch"]), int(state["batch"])


# ------------------------------------------------------------------------- zarr store


class StoreSource:
    """One hook point of an ActivationStore, read through ActivationLoader.

    `loader` reuses a caller's training ActivationLoader (its batch size must match
    the config); its validation split is then the store's rows after its training rows.
    """

    def __init__(
        self,
        store: StoreReader,
        point: str | None,
        *,
        val_fraction: float = 0.01,
        loader: Any = None,
    ):
        points = list(getattr(store, "points", []))
        if point is None:
            if len(points) != 1:
                raise ValueError(
                    f"the store holds points {points}; set TrainConfig.point to one of them"
                )
            point = points[0]
        if point not in points:
            raise ValueError(f"point {point!r} is not in the store; it holds {points}")
        if loader is not None:
            if getattr(loader, "split", "train") != "train":
                raise ValueError("pass the training ActivationLoader (split='train')")
            val_fraction = (store.n_rows - loader.stop) / store.n_rows
        self.store, self.point, self.val_fraction = store, point, val_fraction
        self._train_loader = loader
        self.d_model = int(store.d_model(point))

    def _split_rows(self, split: str) -> int:
        n = self.store.n_rows
        n_val = math.ceil(n * self.val_fraction)
        return n_val if split == "val" else n - n_val

    def loader(self, split: str, batch_size: int, *, seed: int) -> Loader:
        _check_split(split)
        if split == "train" and self._train_loader is not None:
            if self._train_loader.batch_size != batch_size:
                raise ValueError(
                    f"the ActivationLoader yields batches of {self._train_loader.batch_size} "
                    f"rows but TrainConfig.batch_size={batch_size}; make them equal"
                )
            return self._train_loader
        if split == "val" and self._split_rows("val") == 0:
            return TensorLoader(torch.empty(0, self.d_model), batch_size, seed=seed, shuffle=False)
        return self._new_loader(split, batch_size, seed)

    def _new_loader(self, split: str, batch_size: int, seed: int, **kwargs: Any) -> Any:
        from sae_hooks.store import ActivationLoader

        return ActivationLoader(
            self.store,
            self.point,
            batch_size,
            split=split,
            val_fraction=self.val_fraction,
            seed=seed,
            shuffle=split == "train",
            drop_last=split == "train",
            **kwargs,
        )

    def sample(self, n: int, *, seed: int) -> torch.Tensor:
        """Batch 0 of n rows of a one-stream loader: one buffer read, no read-ahead."""
        n = min(n, self._split_rows("train"))
        return self._new_loader("train", n, seed + 7919, streams=1).first_batch()

    def mean_sq_norm(self) -> float | None:
        stats = self.store.stats(self.point)
        value = stats.get("mean_sq_norm") if isinstance(stats, dict) else None
        value = getattr(stats, "mean_sq_norm", value)
        return float(value) if value else None


# ------------------------------------------------------------------------- live model


class ModelSource:
    """Rows captured from a live model at one hook point, mixed in a shuffle buffer.

    Nothing touches the disk. Documents whose index is divisible by `val_every_doc`
    are held out for validation (up to `val_rows` rows kept in memory). Resume is
    approximate: the data position (input batches consumed) is restored, but the
    buffer's contents at the checkpoint are not; use a store for exact resumes.
    """

    def __init__(
        self,
        model: Any,
        point: str,
        data: Iterable[dict[str, Any]],
        *,
        buffer_rows: int = 65_536,
        val_every_doc: int = 20,
        val_rows: int = 16_384,
        drop_bos: bool = False,
        seed: int = 0,
    ):
        if buffer_rows < 1 or val_every_doc < 2 or val_rows < 0:
            raise ValueError(
                "ModelSource needs buffer_rows >= 1, val_every_doc >= 2 and val_rows >= 0, got "
                f"{buffer_rows}, {val_every_doc}, {val_rows}"
            )
        self.model, self.point, self.data = model, point, data
        self.buffer_rows, self.val_every_doc, self.val_rows = buffer_rows, val_every_doc, val_rows
        self.drop_bos, self.seed = drop_bos, seed
        self._val: list[torch.Tensor] = []
        self._n_val = 0
        self._val_next = 0  # first input batch whose held-out rows are not yet kept
        first = next(self._captures(0))
        self.d_model = first[0].shape[1]

    def _captures(self, skip: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(train rows, val rows) per input batch, after skipping `skip` batches."""
        from sae_hooks.data import InputBatches
        from sae_hooks.hooks import capture_batch

        for i, inputs in enumerate(InputBatches(self.data).iter_from(skip), start=skip):
            doc_offset = inputs.doc_offset
            batch = capture_batch(self.model, [self.point], dict(inputs), drop_bos=self.drop_bos)
            rows = batch.acts[self.point].float()
            check_finite(rows, f"activations at {self.point} (input batch {i})")
            held = (batch.doc_index + doc_offset) % self.val_every_doc == 0
            yield self._split_held(i, rows, held)

    def _split_held(
        self, i: int, rows: torch.Tensor, held: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(train rows, held-out rows) of input batch i; keeps held-out rows for "val"."""
        val = rows[held.to(rows.device)]
        if i >= self._val_next and self._n_val < self.val_rows:
            take = val[: self.val_rows - self._n_val].cpu()
            self._val.append(take)
            self._n_val += take.shape[0]
            self._val_next = i + 1
        return rows[~held.to(rows.device)], val

    def loader(self, split: str, batch_size: int, *, seed: int) -> Loader:
        _check_split(split)
        if split == "val":
            rows = torch.cat(self._val) if self._val else torch.empty(0, self.d_model)
            return TensorLoader(rows, batch_size, seed=seed, shuffle=False)
        return _BufferLoader(self, batch_size, seed)

    def sample(self, n: int, *, seed: int) -> torch.Tensor:
        rows, total = [], 0
        for train_rows, _ in self._captures(0):
            rows.append(train_rows.cpu())
            total += train_rows.shape[0]
            if total >= n:
                break
        return torch.cat(rows)[:n]

    def mean_sq_norm(self) -> float | None:
        return None


class _BufferLoader:
    """Fill a buffer, shuffle it, emit the first half in batches, refill, repeat."""

    def __init__(self, source: ModelSource, batch_size: int, seed: int):
        self.source, self.batch_size = source, batch_size
        self.generator = torch.Generator().manual_seed(seed)
        self.inputs_consumed = 0

    def __iter__(self) -> Iterator[torch.Tensor]:
        capacity = max(self.source.buffer_rows, 2 * self.batch_size)
        buffer = torch.empty(0, self.source.d_model)
        for train_rows, _ in self.source._captures(self.inputs_consumed):
            self.inputs_consumed += 1
            buffer = torch.cat([buffer, train_rows.cpu()])
            if buffer.shape[0] < capacity:
                continue
            buffer = buffer[torch.randperm(buffer.shape[0], generator=self.generator)]
            n_out = (buffer.shape[0] // 2) // self.batch_size * self.batch_size
            yield from buffer[:n_out].split(self.batch_size)
            buffer = buffer[n_out:]
        buffer = buffer[torch.randperm(buffer.shape[0], generator=self.generator)]
        n_out = buffer.shape[0] // self.batch_size * self.batch_size
        yield from buffer[:n_out].split(self.batch_size)
        self.inputs_consumed = 0

    def state_dict(self) -> dict[str, Any]:
        return {"inputs_consumed": self.inputs_consumed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.inputs_consumed = int(state["inputs_consumed"])


# ------------------------------------------------------------------------- pairs


class TensorPairSource(TensorSource):
    """Aligned (input, target) rows in memory, e.g. a layer's MLP input and output.

    Batches are RowPairs (x, y), split into train and val as TensorSource splits rows;
    `d_model` is d_in, and `mean_sq_norm` is the mean of the two points' E||.||^2, so
    the trainer's scale brings each side to E||s x||^2 = d.
    """

    def __init__(
        self,
        inputs: torch.Tensor,
        targets: torch.Tensor,
        *,
        val_fraction: float = 0.1,
        split_seed: int = 0,
    ):
        for name, t in (("inputs", inputs), ("targets", targets)):
            if not isinstance(t, torch.Tensor) or t.dim() != 2:
                got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
                raise ValueError(f"TensorPairSource {name} must be rows (N, d), got {got}")
        if inputs.shape[0] != targets.shape[0]:
            raise ValueError(
                f"TensorPairSource needs one target row per input row, got {inputs.shape[0]} "
                f"inputs and {targets.shape[0]} targets"
            )
        pair = RowPair(inputs, targets.to(inputs.dtype))
        _check_rows(inputs, val_fraction)
        for name, t in zip(("inputs", "targets"), pair, strict=True):
            check_finite(t, f"TensorPairSource {name}")
        self._split(pair, val_fraction, split_seed)
        self.d_model, self.d_target = inputs.shape[1], targets.shape[1]
        # E||[x | y]||^2 / 2 summed over each joined row, as before pairs (the same scale)
        self._msn = float(torch.cat(pair, dim=1).double().pow(2).sum(-1).mean()) / 2

    def mean_sq_norm(self) -> float | None:
        return self._msn


class StorePairSource:
    """Two points of one store read in step: RowPairs (x, y) of the same tokens.

    Both points were captured by the same forwards (one `capture_to_store` call with
    both points), so row i of one is row i of the other; two ActivationLoaders with
    the same seed, split and chunking shuffle them identically.
    """

    def __init__(self, store: StoreReader, point: str, target_point: str, **kwargs: Any):
        self.inputs = StoreSource(store, point, **kwargs)
        self.targets = StoreSource(store, target_point, **kwargs)
        if store.chunk_rows(point) != store.chunk_rows(target_point):
            raise ValueError(
                f"points {point!r} and {target_point!r} are chunked differently "
                f"({store.chunk_rows(point)} vs {store.chunk_rows(target_point)} rows); "
                "capture both in one capture_to_store call with the same widths"
            )
        self.d_model, self.d_target = self.inputs.d_model, self.targets.d_model

    def loader(self, split: str, batch_size: int, *, seed: int) -> Loader:
        return PairedLoader(
            self.inputs.loader(split, batch_size, seed=seed),
            self.targets.loader(split, batch_size, seed=seed),
        )

    def sample(self, n: int, *, seed: int) -> RowPair:
        return RowPair(self.inputs.sample(n, seed=seed), self.targets.sample(n, seed=seed))

    def mean_sq_norm(self) -> float | None:
        a, b = self.inputs.mean_sq_norm(), self.targets.mean_sq_norm()
        if a is None or b is None:
            rows = torch.cat(self.sample(4096, seed=0), dim=1).double()
            return float(rows.pow(2).sum(-1).mean()) / 2
        return (a + b) / 2


class PairedLoader:
    """Two loaders over the same rows in the same order, their batches paired (RowPair)."""

    def __init__(self, inputs: Loader, targets: Loader):
        self.inputs, self.targets = inputs, targets

    def __iter__(self) -> Iterator[RowPair]:
        a, b = iter(self.inputs), iter(self.targets)
        for x in a:
            y = next(b)
            if y.shape[0] != x.shape[0]:
                raise RuntimeError("paired loaders fell out of step: the two points differ")
            yield RowPair(x, y.to(x.dtype))
        next(b, None)  # let the target loader finish its epoch too

    def read_share(self, rank: int, world: int, streams: int | None = None) -> PairedLoader:
        """Both sides read only this rank's streams (see ActivationLoader.read_share)."""
        self.inputs = share_of(self.inputs, rank, world, streams)
        self.targets = share_of(self.targets, rank, world, streams)
        return self

    def state_dict(self) -> dict[str, Any]:
        return {"inputs": self.inputs.state_dict(), "targets": self.targets.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.inputs.load_state_dict(state["inputs"])
        self.targets.load_state_dict(state["targets"])


# ------------------------------------------------------------------------- dispatch


def as_source(obj: Any, point: str | None = None, target_point: str | None = None) -> RowSource:
    """A RowSource for any of the accepted source types (see the module docstring).

    With target_point (transcoders): an (inputs, targets) pair of row tensors, or a
    store URL / ActivationStore holding both points, or a RowSource of paired rows.
    """
    if isinstance(obj, tuple) and len(obj) == 2 and all(isinstance(t, torch.Tensor) for t in obj):
        if target_point is None:
            raise ValueError(
                "an (inputs, targets) pair of tensors trains a transcoder: set "
                "TrainConfig.target_point (and architecture='transcoder' or 'skip_transcoder')"
            )
        return TensorPairSource(*obj)
    if target_point is not None and not isinstance(obj, RowSource):
        return _pair_source(obj, point, target_point)
    if isinstance(obj, torch.Tensor):
        return TensorSource(obj)
    if isinstance(obj, RowSource):
        return obj
    if isinstance(obj, (str, os.PathLike)):
        from sae_hooks.store import open_store

        return StoreSource(open_store(obj), point)
    if hasattr(obj, "state_dict") and hasattr(obj, "store") and hasattr(obj, "point"):
        if point is not None and point != obj.point:
            raise ValueError(f"TrainConfig.point={point!r} but the loader reads {obj.point!r}")
        return StoreSource(obj.store, obj.point, loader=obj)
    if hasattr(obj, "stats") and hasattr(obj, "d_model") and hasattr(obj, "points"):
        return StoreSource(obj, point)
    raise TypeError(
        "a training source must be a store URL, an ActivationStore (with TrainConfig.point), "
        "an ActivationLoader, a (N, d) tensor of rows, or a RowSource such as ModelSource; "
        f"got {type(obj).__name__}"
    )


def _pair_source(obj: Any, point: str | None, target_point: str) -> RowSource:
    if point is None:
        raise ValueError("a paired source needs both TrainConfig.point (input) and target_point")
    if isinstance(obj, (str, os.PathLike)):
        from sae_hooks.store import open_store

        obj = open_store(obj)
    if hasattr(obj, "stats") and hasattr(obj, "d_model") and hasattr(obj, "points"):
        return StorePairSource(obj, point, target_point)
    raise TypeError(
        f"with target_point={target_point!r} the source must be an (inputs, targets) pair of "
        "(N, d) tensors, a store URL or ActivationStore holding both points, or a RowSource "
        f"of RowPair (input, target) batches; got {type(obj).__name__}"
    )


def _check_split(split: str) -> None:
    from sae_hooks.store.loader import SPLITS

    if split not in SPLITS:
        raise ValueError(f"split must be one of {list(SPLITS)}, got {split!r}")
