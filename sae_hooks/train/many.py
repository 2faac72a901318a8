"""Many SAEs from one pass over the data: `train_many(configs, source, run_dir)`.

A grid of SAEs (points x architectures x widths x k / target L0 x lr x seed) trains
in lock-step: at every step each hook point's batch is read from the store (or
captured from the model, see `MultiPointSource`) ONCE, moved to the device once,
scaled once per distinct input scale, and handed to every SAE that trains on that
point. Each SAE is driven by its own `Trainer` (its own optimiser, log, checkpoints
and run directory run_dir/<name>/), through the same per-step methods `fit` uses,
so an SAE trained here equals the one `train()` gives on the same batches.

Sharing needs the SAEs of one point to see the same batches: they must agree on
`batch_size` and on the batch order's seed (`TrainConfig.batch_seed`: `data_seed`,
else `seed`; a `Sweep` over seeds keeps one data_seed so the init seeds vary alone).

Resume: each SAE resumes from its own checkpoint. SAEs whose checkpoints stand at
different steps (a kill between two SAEs' checkpoint writes) are advanced alone,
each on its own loader, until they reach the same step and data position; then
they share again.

Data parallel: under `accelerate launch` / `torchrun` every SAE's backward runs
first, then ONE all-reduce carries all SAEs' gradients, buffers and fire counts,
then every SAE applies its step.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:  # Windows: updates of sweep.json are not serialised there
    fcntl = None  # type: ignore[assignment]

import torch
from tqdm.auto import tqdm

from sae_hooks.activations import ActivationBatch, Batch, to_training
from sae_hooks.atomic import write_text_atomic
from sae_hooks.distributed import processes, sync_replicas_
from sae_hooks.jsonio import loads
from sae_hooks.sae import SAE

from .config import TrainConfig
from .sources import ModelSource, RowSource, as_source, check_finite
from .sweep import Sweep, format_plan, sweep_names
from .trainer import PendingStep, Trainer

SWEEP_FILE = "sweep.json"
SWEEP_LOCK = ".sweep.json.lock"


def train_many(
    configs: Sequence[TrainConfig] | Sweep,
    source: Any,
    run_dir: str | os.PathLike,
    *,
    names: Sequence[str] | None = None,
    resume: bool = True,
    until_step: int | None = None,
) -> dict[str, SAE]:
    """Train (or resume) every config from one shared pass over `source`.

    configs: TrainConfigs (or a Sweep); names: one sub-directory name per config
    (default: derived from what differs, e.g. "resid_post.3-batchtopk-n3072-k32-s0").
    source: as for `train` (a store URL / ActivationStore, a (N, d) tensor, a
    RowSource), or a `MultiPointSource` (one model forward for every point).
    until_step stops every SAE there (for tests and staged runs). Returns {name: SAE};
    run_dir/sweep.json lists the SAEs, their configs and final metrics, merged with those
    of earlier or simultaneous sweeps into run_dir (`update_sweep_index`). The plan (every
    SAE and its settings, `sweep.format_plan`) is printed first when any config shows
    progress.
    """
    sweep = configs if isinstance(configs, Sweep) else None
    if sweep is not None:
        names = sweep.names() if names is None else names
        configs = sweep.configs()
    configs = list(configs)
    if not configs or not all(isinstance(c, TrainConfig) for c in configs):
        raise TypeError("train_many needs a non-empty list of TrainConfig (or a Sweep)")
    names = sweep_names(configs) if names is None else list(names)
    _check_names(names, len(configs))
    if processes().is_main and any(c.progress for c in configs):
        plan = list(zip(names, configs, strict=True))
        axes = list(sweep.axes) if sweep is not None else ()
        print(format_plan(plan, None if sweep is None else sweep.base, axes), flush=True)
    check_shareable(configs)
    run_dir = Path(run_dir)
    _index_entries(run_dir)  # a damaged index is refused before any SAE starts
    sources = _point_sources(source, configs)
    trainers = [
        Trainer(cfg, sources[_source_key(cfg)], run_dir / name, resume=resume)
        for cfg, name in zip(configs, names, strict=True)
    ]
    store = _location(source)
    _write_summary(run_dir, names, trainers, store, final=False)
    _Lockstep(trainers).run(until_step)
    _write_summary(run_dir, names, trainers, store, final=True)
    return {name: t.sae for name, t in zip(names, trainers, strict=True)}


def _location(source: Any) -> str | None:
    """The store's location for sweep.json (absolute when local), None for other sources."""
    if not isinstance(source, (str, os.PathLike)):
        return None
    text = os.fspath(source)
    return text if "://" in text else str(Path(text).resolve())


def check_shareable(configs: Sequence[TrainConfig]) -> None:
    """The SAEs of one point must read the same batches: same batch_size and batch seed."""
    by_point: dict[str | None, list[TrainConfig]] = {}
    for cfg in configs:
        by_point.setdefault(cfg.point, []).append(cfg)
    for point, group in by_point.items():
        for field, value in (("batch_size", lambda c: c.batch_size), ("data_seed", _seed)):
            seen = sorted({value(c) for c in group})
            if len(seen) > 1:
                raise ValueError(
                    f"the SAEs on point {point!r} disagree on {field} ({seen}); SAEs that "
                    "share a point share its batches, so give them one batch_size and one "
                    "data_seed (the batch order; `seed` may still differ: it seeds the init)"
                )


def _seed(cfg: TrainConfig) -> int:
    return cfg.batch_seed


def _check_names(names: list[str], n: int) -> None:
    if len(names) != n:
        raise ValueError(f"got {len(names)} names for {n} configs; give one name per config")
    dupes = sorted({x for x in names if names.count(x) > 1})
    if dupes:
        raise ValueError(f"the SAE names must be unique; repeated: {dupes}")
    for name in names:
        if not name or name in (".", "..") or "/" in name or "\\" in name:
            raise ValueError(f"SAE name {name!r} must be a plain directory name")


def _source_key(cfg: TrainConfig) -> tuple[str | None, str | None]:
    """A source per point, and per (input, target) pair for paired variants (transcoders)."""
    return cfg.point, cfg.target_point


def _point_sources(source: Any, configs: Sequence[TrainConfig]) -> dict[tuple, RowSource]:
    """One RowSource per point (or point pair), all over the same opened store / model."""
    if isinstance(source, (str, os.PathLike)):
        from sae_hooks.store import open_store

        source = open_store(source)
    if isinstance(source, MultiPointSource):
        return {_source_key(cfg): source.for_point(cfg.point) for cfg in configs}
    shared = as_source(source, configs[0].point) if isinstance(source, torch.Tensor) else None
    return {
        _source_key(cfg): shared or as_source(source, cfg.point, cfg.target_point)
        for cfg in configs
    }


# --------------------------------------------------------------------------- the loop


class _Lockstep:
    """Steps every Trainer; trainers on one point at one data position share a stream."""

    def __init__(self, trainers: list[Trainer]) -> None:
        self.trainers = trainers
        self.rank = processes()
        self.streams: dict[int, Iterator[torch.Tensor]] = {}  # id(loader) -> batches

    def run(self, until_step: int | None) -> None:
        stops = [
            t.config.steps if until_step is None else min(until_step, t.config.steps)
            for t in self.trainers
        ]
        for t in self.trainers:
            stream = t.start_fit()
            self.streams[id(t.loader)] = stream
        show = self.rank.is_main and any(t.config.progress for t in self.trainers)
        bar = tqdm(
            total=sum(stops),
            initial=sum(min(t.step, s) for t, s in zip(self.trainers, stops, strict=True)),
            disable=not show,
            desc="sweep",
        )
        with contextlib.ExitStack() as stack:
            for t in self.trainers:
                stack.enter_context(t.sae.rank_share(self.rank.world))
            try:
                while True:
                    movers = self._movers(stops)
                    if not movers:
                        break
                    self._step(movers, bar)
                for t in self.trainers:
                    t.end_loop()
            finally:
                bar.close()
                for stream in self.streams.values():
                    stream.close()
        for t in self.trainers:
            t.finish_fit()

    def _movers(self, stops: list[int]) -> list[Trainer]:
        """The trainers at the lowest step still short of their stop, sharing streams."""
        active = [t for t, s in zip(self.trainers, stops, strict=True) if t.step < s]
        if not active:
            return []
        low = min(t.step for t in active)
        movers = [t for t in active if t.step == low]
        self._share(movers)
        return movers

    def _share(self, movers: list[Trainer]) -> None:
        """Trainers on one point at the same data position read one loader from now on."""
        first: dict[tuple[tuple, str], Any] = {}
        for t in movers:
            key = (
                _source_key(t.config),
                json.dumps(t.loader.state_dict(), sort_keys=True, default=str),
            )
            leader = first.setdefault(key, t.loader)
            if leader is not t.loader:
                old = t.loader
                for other in self.trainers:
                    if other.loader is old:
                        other.loader = leader
                stream = self.streams.pop(id(old), None)
                if stream is not None:
                    stream.close()

    def _step(self, movers: list[Trainer], bar: tqdm) -> None:
        """One step of every mover: each stream read once, one all-reduce for all."""
        batches: dict[int, Batch] = {}
        scaled: dict[tuple[int, str, float], Batch] = {}
        pending: list[PendingStep] = []
        for t in movers:
            key = id(t.loader)
            if key not in batches:
                batches[key] = next(self.streams[key])
            x_key = (key, str(t.device), t.scale)
            if x_key not in scaled:
                scaled[x_key] = to_training(batches[key], t.device, t.scale, non_blocking=True)
            pending.append(t.backward(scaled[x_key]))
        if self.rank.distributed:
            sync_all_(movers, pending, self.rank)
        for t, p in zip(movers, pending, strict=True):
            t.apply(p)
            t.after_step(bar)


def sync_all_(trainers: Sequence[Trainer], pending: Sequence[PendingStep], rank: Any) -> None:
    """ONE all-reduce for all SAEs: their gradients, floating buffers and fire counts."""
    devices = {str(t.device) for t in trainers}
    if len(devices) > 1:
        raise ValueError(f"data-parallel train_many needs one device for all SAEs, got {devices}")
    modules = torch.nn.ModuleList([t.sae for t in trainers])
    sizes = [p.fires.numel() for p in pending]
    fires = sync_replicas_(modules, torch.cat([p.fires for p in pending]), rank)
    for p, f in zip(pending, fires.split(sizes), strict=True):
        p.fires = f


# --------------------------------------------------------------------------- summary


def _write_summary(
    run_dir: Path, names: list[str], trainers: list[Trainer], store: str | None, final: bool
) -> None:
    """run_dir/sweep.json: the store (when given by location), every SAE's name, config,
    store, step and (once trained) the latest value of each logged metric.

    The file is an index of every SAE trained in run_dir, not of this call's alone: the
    entries of this call replace those of the same name, the others are kept (another
    sweep into the same directory, one that dropped an axis value), as long as their
    directory is there. Read, merged and written under an flock on `.sweep.json.lock`,
    so simultaneous sweeps serialise; written through a temporary file and a rename."""
    if not processes().is_main:
        return
    from .runlog import read_log

    entries = []
    for name, t in zip(names, trainers, strict=True):
        entry: dict[str, Any] = {"name": name, "step": t.step, "config": t.config.to_dict()}
        entry["store"] = store
        if final:
            entry["metrics"] = last_metrics(read_log(t.run_dir))
        entries.append(entry)
    update_sweep_index(run_dir, entries, store)


def update_sweep_index(
    run_dir: str | os.PathLike, entries: list[dict[str, Any]], store: str | None
) -> None:
    """Merge `entries` into run_dir/sweep.json under its lock: same names replaced, other
    SAEs whose directory is there kept; written whole (temporary file, rename)."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    names = {e["name"] for e in entries}
    with _index_lock(run_dir):
        kept = [e for e in _index_entries(run_dir) if e["name"] not in names]
        kept = [e for e in kept if (run_dir / e["name"]).is_dir()]
        index = {"store": store, "saes": kept + list(entries)}
        text = json.dumps(index, indent=2, sort_keys=True, default=str)
        write_text_atomic(run_dir / SWEEP_FILE, text + "\n")


@contextlib.contextmanager
def _index_lock(run_dir: Path) -> Iterator[None]:
    """Hold (waiting for it) the flock that serialises updates of run_dir/sweep.json.
    The lock file stays: unlinking it would let a waiter lock a file no one else sees."""
    fd = os.open(run_dir / SWEEP_LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # drops the flock


def _index_entries(run_dir: Path) -> list[dict[str, Any]]:
    """The entries of an existing sweep.json (none if there is none); a damaged one is
    refused rather than overwritten, so no trained SAE drops out of the index."""
    path = run_dir / SWEEP_FILE
    if not path.exists():
        return []
    try:
        saes = loads(path.read_text(encoding="utf-8"), str(path))["saes"]
        if not all(isinstance(e, dict) and isinstance(e.get("name"), str) for e in saes):
            raise TypeError("an entry without a name")
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(
            f"{path} is damaged ({err}); it indexes the SAEs trained in {run_dir}. Repair "
            "or remove it (the SAEs' directories are intact), then train again"
        ) from err
    return saes


def last_metrics(records: list[dict[str, Any]]) -> dict[str, float]:
    """The latest value of every numeric key of a run's log (val/* included)."""
    out: dict[str, float] = {}
    for record in records:
        for key, value in record.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                out[key] = value
    return out


def read_sweep(run_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """The SAEs of a sweep directory (its sweep.json entries), in training order."""
    path = Path(run_dir) / SWEEP_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{run_dir} holds no {SWEEP_FILE}: it was not written by train_many"
        )
    return loads(path.read_text(), str(path))["saes"]


# --------------------------------------------------------------------------- live capture


class MultiPointSource:
    """Live capture of several points from ONE model forward per input batch.

    `for_point(p)` is a RowSource for point p (a ModelSource whose captures are
    shared); the one forward captures every point (it stops after the deepest one),
    and each input batch's activations are kept only until every point in use has
    taken them. `options` are ModelSource's (buffer_rows, val_every_doc, ...).
    """

    def __init__(self, model: Any, points: Sequence[str], data: Any, **options: Any) -> None:
        self.points = list(dict.fromkeys(points))
        if not self.points:
            raise ValueError("MultiPointSource needs at least one point")
        self.model, self.data, self.options = model, data, options
        self.forwards = 0  # model forwards run (tests and benchmarks read it)
        self._cache: dict[int, tuple[ActivationBatch, set[str]]] = {}  # batch, points taken
        self._views: dict[str, SharedModelSource] = {}

    def for_point(self, point: str | None) -> RowSource:
        if point not in self.points:
            raise ValueError(f"point {point!r} is not captured; MultiPointSource has {self.points}")
        if point not in self._views:
            self._views[point] = SharedModelSource(self, point, **self.options)
        return self._views[point]

    def captured(self, i: int, inputs: dict[str, Any], point: str) -> tuple[torch.Tensor, Any]:
        """(rows of `point`, doc_index) of input batch i, from the one forward of all points."""
        from sae_hooks.hooks import capture_batch

        if i not in self._cache:
            self.forwards += 1
            drop_bos = self.options.get("drop_bos", False)
            batch = capture_batch(self.model, self.points, inputs, drop_bos=drop_bos)
            self._cache[i] = (batch, set())
        batch, taken = self._cache[i]
        taken.add(point)
        if taken >= set(self._views):
            del self._cache[i]
        return batch.acts[point], batch.doc_index


class SharedModelSource(ModelSource):
    """ModelSource of one point whose forwards are shared through a MultiPointSource."""

    def __init__(self, owner: MultiPointSource, point: str, **options: Any) -> None:
        self._owner = owner
        self._samples: dict[int, torch.Tensor] = {}
        super().__init__(owner.model, point, owner.data, **options)

    def sample(self, n: int, *, seed: int) -> torch.Tensor:
        """ModelSource's sample (the first n training rows, whatever the seed), read once."""
        if n not in self._samples:
            self._samples[n] = super().sample(n, seed=seed)
        return self._samples[n]

    def _captures(self, skip: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for i, inputs in enumerate(self.data):
            if i < skip:
                continue
            inputs = dict(inputs)
            doc_offset = int(inputs.pop("doc_offset", 0))
            rows, doc_index = self._owner.captured(i, inputs, self.point)
            rows = rows.float()
            check_finite(rows, f"activations at {self.point} (input batch {i})")
            held = (doc_index + doc_offset) % self.val_every_doc == 0
            yield self._split_held(i, rows, held)
