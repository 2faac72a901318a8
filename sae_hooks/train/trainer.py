"""The training loop: one Adam step per batch, metrics kept on device between logs.

The hot loop never waits for the device except at log steps (metric sums, fire
counts and the adaptive sparsity coefficient all live on device) and at the
dead-latent check, which runs at most once per log interval and decides whether
the AuxK loss is computed at all; with no dead latent it costs nothing.

Scale: rows are multiplied by s, chosen so that E||s x||^2 = d, and the SAE trains
with input_scale = 1. The SAE handed back and saved to run_dir/sae has
input_scale = s, so it runs on raw activations with the same codes and the same FVU.

Data parallel: under `accelerate launch` / `torchrun` (see sae_hooks/distributed.py)
every rank trains on its slice of each global batch of `batch_size` rows and one
all-reduce per step keeps the replicas identical. Rank 0 alone writes checkpoints,
logs and the final SAE; a checkpoint resumes under any number of processes. The
SAE splits its own budget over the ranks (`SAE.rank_share`).

Everything that depends on the SAE variant (penalty, budget, betas, AuxK default,
construction, threshold init) is declared by the SAE class
(sae_hooks/sae/training.py); this module names no architecture. The log's keys
and what each measures are listed in runlog.LOG_KEYS.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from sae_hooks.devices import available_device
from sae_hooks.distributed import RankSlice, processes, sync_replicas_
from sae_hooks.sae import SAE, SAE_REGISTRY

from . import checkpoint, runlock
from .coefficient import SparsityCoefficient
from .config import RESUME_FREE_FIELDS, TrainConfig
from .constraints import constrained_weight, normalize_rows_, remove_parallel_gradient_
from .init import init_decoder_bias_
from .losses import aux_k_loss, aux_k_rank_scale
from .runlog import NoLog, RunLog
from .schedule import lr_factor
from .sources import Loader, RowSource, as_source, full_batches
from .validation import validate
from .window import DeadLatents, LogWindow


class Trainer:
    """Trains one SAE on one source; `fit()` runs (or resumes) to the configured end."""

    def __init__(
        self,
        config: TrainConfig,
        source: Any,
        run_dir: str | Path,
        *,
        sae: SAE | None = None,
        resume: bool = True,
    ) -> None:
        if not isinstance(config, TrainConfig):
            raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")
        self.run_dir = Path(run_dir)
        self.source: RowSource = as_source(source, config.point)
        d = self.source.d_model
        if sae is not None:
            config = _config_for_sae(config, sae, d)
        self.config = cfg = config.resolve(d)
        self.rank = rank = processes()
        if cfg.batch_size % rank.world:
            raise ValueError(
                f"batch_size={cfg.batch_size} is not divisible by the {rank.world} processes; "
                "each rank trains on batch_size // world rows of every global batch"
            )
        self.device = available_device(rank.device(cfg.device))
        if rank.is_main:  # one training per run directory; then clear what a kill left
            runlock.acquire(self.run_dir)
        try:
            self._start(sae, resume, d)
        except BaseException:
            if rank.is_main:
                runlock.release(self.run_dir)
            raise

    # ------------------------------------------------------------------ set-up

    def _start(self, sae: SAE | None, resume: bool, d: int) -> None:
        """Find or create the run's state: checkpoint restored, or a fresh initialised SAE."""
        cfg, rank = self.config, self.rank
        if rank.is_main:
            checkpoint.remove_temporaries(self.run_dir)
        found = checkpoint.find(self.run_dir)
        checkpoint.check_every_rank_sees(found, rank, self.device, self.run_dir)
        if found is not None and not resume:
            raise FileExistsError(
                f"{self.run_dir} already holds a checkpoint; pass resume=True to continue it "
                "or choose another run_dir"
            )
        state = checkpoint.read_state(found) if found is not None else None
        if state is not None:
            self._check_resumable(found, state)
        self._build(sae if sae is not None else build_sae(cfg, d))
        if found is not None:
            self._restore(found)
        else:
            self.scale = self._initialise()
            self._broadcast_initial_state()
        self.log: RunLog | NoLog = NoLog()
        if rank.is_main:
            self.log = RunLog(
                self.run_dir,
                resume_step=self.step if found is not None else None,
                tensorboard=cfg.tensorboard,
                wandb_project=cfg.wandb_project,
                config=cfg.to_dict(),
            )

    def _build(self, sae: SAE) -> None:
        """The SAE on its device, its optimiser, the loader and the on-device statistics."""
        cfg = self.config
        self.sae = sae
        self.sae.to(self.device, dtype=getattr(torch, cfg.dtype))
        self.sae.train()
        self.optimizer = torch.optim.Adam(
            self.sae.parameters(), lr=cfg.lr, betas=cfg.adam_betas, eps=cfg.adam_eps
        )
        self.loader: Loader = self.source.loader("train", cfg.batch_size, seed=cfg.seed)
        if self.rank.distributed:
            self.loader = RankSlice(self.loader, self.rank)
        self._constrained = constrained_weight(self.sae)
        self._forward = torch.compile(self.sae) if cfg.compile else self.sae
        self._autocast = (cfg.device.startswith("cuda")) if cfg.autocast is None else cfg.autocast
        self._dead_check_every = max(
            1, min(cfg.log_every, math.ceil(cfg.dead_tokens / cfg.batch_size / 10))
        )
        self.dead = DeadLatents(cfg.nb_concepts, cfg.dead_tokens, self.device)
        self.window = LogWindow(cfg.nb_concepts, self.device)
        self.coefficient = SparsityCoefficient(cfg, self.device)
        self.step = 0
        self.aux_active = False

    @torch.no_grad()
    def _initialise(self) -> float:
        """Input scale from stats or a sample; data-dependent init of the SAE."""
        cfg = self.config
        sample = self.source.sample(cfg.init_rows, seed=cfg.seed).to(self.device, torch.float32)
        scale = 1.0
        if cfg.normalize_activations:
            msn = self.source.mean_sq_norm() or float(sample.pow(2).sum(-1).mean())
            if not msn > 0:
                raise ValueError("cannot normalise activations: their mean squared norm is 0")
            scale = math.sqrt(self.source.d_model / msn)
        if self._constrained is not None:
            normalize_rows_(self._constrained)
        self.sae.tie_encoder_to_dictionary_(warn=False)
        init_decoder_bias_(self.sae, sample * scale, cfg.b_dec_init)
        self.sae.init_from_data(sample * scale, cfg)
        return scale

    def _broadcast_initial_state(self) -> None:
        """Every rank starts from rank 0's SAE, whatever its own sample gave."""
        if not self.rank.distributed:
            return
        for tensor in self.sae.state_dict().values():
            self.rank.broadcast_(tensor)
        self.scale = self.rank.broadcast_object(self.scale)

    def _check_resumable(self, path: Path, state: dict[str, Any]) -> None:
        """The checkpoint's config must be this one (bar RESUME_FREE_FIELDS), its step in range."""
        file = path / checkpoint.STATE_FILE
        try:
            saved = TrainConfig.from_dict(state["config"])
        except (ValueError, TypeError) as err:
            raise ValueError(f"{file} holds an invalid training config: {err}") from None
        if not 0 <= state["step"] <= self.config.steps:
            raise ValueError(
                f"{file} is at step {state['step']}, outside this run's 0..{self.config.steps} "
                f"steps; the checkpoint is damaged or from another run: delete {path} to restart"
            )
        diff = sorted(
            k
            for k, v in saved.to_dict().items()
            if k not in RESUME_FREE_FIELDS and self.config.to_dict()[k] != v
        )
        if diff:
            raise ValueError(
                f"cannot resume {path}: the config differs in {diff}; "
                f"only {sorted(RESUME_FREE_FIELDS)} may change between runs"
            )

    def _restore(self, path: Path) -> None:
        tensors, state = checkpoint.load(
            path, sae=self.sae, optimizer=self.optimizer, device=self.device
        )
        self.dead.since_fired = tensors["since_fired"]
        self.coefficient.value = tensors["coefficient"]
        steps = state["window_steps"]
        self.window.load_state(tensors, steps, steps * self.config.batch_size)
        self.step, self.scale = state["step"], state["scale"]
        self.aux_active = state["aux_active"]
        self.loader.load_state_dict(state["loader"])

    def save_checkpoint(self) -> Path:
        """Write a checkpoint (rank 0 only: the ranks hold identical state)."""
        if not self.rank.is_main:
            return self.run_dir / checkpoint.CHECKPOINT
        return checkpoint.save(
            self.run_dir,
            sae=self.sae,
            optimizer=self.optimizer,
            tensors={
                "since_fired": self.dead.since_fired,
                "coefficient": self.coefficient.value,
                **self.window.state_tensors(),
            },
            state={
                "step": self.step,
                "scale": self.scale,
                "aux_active": self.aux_active,
                "window_steps": self.window.steps,
                "loader": self.loader.state_dict(),
                "config": self.config.to_dict(),
            },
        )

    # ------------------------------------------------------------------ the loop

    def fit(self, until_step: int | None = None) -> SAE:
        """Train to `until_step` (default: the end), checkpoint, and return the SAE.

        At the end of the run the SAE is saved to run_dir/sae with input_scale set,
        so both it and the returned module run on raw activations.
        """
        main = self.rank.is_main
        if main:
            runlock.acquire(self.run_dir)  # again: a fit after an earlier fit released it
        try:
            self._fit(until_step)
        finally:
            if main:
                runlock.release(self.run_dir)
        self.rank.barrier()  # the saved files exist for every rank once fit returns
        return self.sae

    def _fit(self, until_step: int | None) -> None:
        cfg = self.config
        stop = cfg.steps if until_step is None else min(until_step, cfg.steps)
        main = self.rank.is_main
        self.sae.input_scale.fill_(1.0)
        self.sae.train()
        if main:
            cfg.to_json(self.run_dir / "config.json")
        batches = full_batches(self.loader, cfg.batch_size // self.rank.world)
        bar = tqdm(
            total=cfg.steps, initial=self.step, disable=not (cfg.progress and main), desc="train"
        )
        self._tic, self._tic_step = time.perf_counter(), self.step
        with self.sae.rank_share(self.rank.world):
            self._loop(stop, batches, bar)
        if self.step == cfg.steps:
            self.sae.input_scale.fill_(self.scale)
            self.sae.eval()
            if main:
                self.sae.save(self.run_dir / "sae")
        self.log.close()

    def _loop(self, stop: int, batches: Iterator[torch.Tensor], bar: tqdm) -> None:
        cfg = self.config
        try:
            while self.step < stop:
                x = next(batches).to(self.device, torch.float32, non_blocking=True) * self.scale
                self.train_step(x)
                self.step += 1
                bar.update(1)
                if self.step % self._dead_check_every == 0 and cfg.aux_coefficient > 0:
                    self.aux_active = self.dead.any()
                if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                    bar.set_postfix(self._log_train(), refresh=False)
                if cfg.val_every and self.step % cfg.val_every == 0 and self.step < cfg.steps:
                    self._log_validation()
                if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0:
                    self.save_checkpoint()
            if self.step == cfg.steps and not self.log.has(self.step, "val/fvu"):
                self._log_validation()  # once: a rerun of a finished run adds no line
            self.save_checkpoint()
        finally:
            bar.close()

    def train_step(self, x: torch.Tensor) -> None:
        """One optimiser step on this rank's rows x (already scaled)."""
        cfg, sae = self.config, self.sae
        lr = cfg.lr * lr_factor(self.step, cfg.steps, cfg.warmup_steps, cfg.decay_fraction)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self._autocast):
            out = self._forward(x)
            err = x - out.x_hat.float()
            mse = err.pow(2).sum(-1).mean()
            loss = mse
            if self.coefficient.active:
                loss = loss + self.coefficient.at(self.step) * sae.sparsity_loss(out).float()
            aux = self._aux_loss(err.detach(), out.z_pre)
            loss = loss + cfg.aux_coefficient * aux
        loss.backward()
        with torch.no_grad():
            fires = (out.z.detach() != 0).sum(0)
        if self.rank.distributed:
            fires = sync_replicas_(sae, fires, self.rank)
        self._optimizer_step()
        with torch.no_grad():
            rows = x.shape[0] * self.rank.world
            self.dead.update(fires, rows)
            self.coefficient.steer(fires.sum() / rows)
            losses = torch.stack([loss.detach(), mse.detach(), aux.detach()])
            self.window.add(losses, x, out.x_hat.detach(), fires, rows)

    def _aux_loss(self, residual: torch.Tensor, z_pre: torch.Tensor) -> torch.Tensor:
        """AuxK while some latent is dead (checked every few steps), else a constant 0."""
        if not self.aux_active:
            return torch.zeros((), device=self.device)
        aux = aux_k_loss(
            residual, z_pre, self.dead.mask(), self.sae.get_dictionary(), self.config.aux_k
        )
        if self.rank.distributed:
            aux = aux * aux_k_rank_scale(residual, self.rank)
        return aux

    def _optimizer_step(self) -> None:
        """Clip, step, and keep the decoder rows on the unit sphere."""
        if self._constrained is not None:
            remove_parallel_gradient_(self._constrained)
        if self.config.grad_clip is not None:
            params = self.sae.parameters()
            torch.nn.utils.clip_grad_norm_(params, self.config.grad_clip, foreach=True)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self._constrained is not None:
            normalize_rows_(self._constrained)

    # ------------------------------------------------------------------ metrics

    def _log_train(self) -> dict[str, float]:
        cfg = self.config
        self.window.all_reduce(self.rank)
        record = self.window.record()
        if not math.isfinite(record["loss"]):
            raise FloatingPointError(
                f"the training loss became {record['loss']} between steps {self._tic_step} and "
                f"{self.step}; the last checkpoint in {self.run_dir} is from before it. Lower "
                "lr, or check the activations for overflow"
            )
        now = time.perf_counter()
        record.update(
            dead_fraction=self.dead.fraction(),
            lr=cfg.lr * lr_factor(self.step - 1, cfg.steps, cfg.warmup_steps, cfg.decay_fraction),
            tokens_per_s=(self.step - self._tic_step) * cfg.batch_size / (now - self._tic),
        )
        if self.coefficient.active:
            record[self.coefficient.field] = float(self.coefficient.at(self.step - 1))
        self.log.write({"step": self.step, "tokens": self.step * cfg.batch_size, **record})
        self.window.reset()
        self._tic, self._tic_step = now, self.step
        return {k: round(record[k], 4) for k in ("loss", "fvu", "l0")}

    def _log_validation(self) -> None:
        if self.rank.is_main:  # the ranks hold the same SAE: one of them validates
            self.log.write({"step": self.step, **self.validate()})

    def validate(self) -> dict[str, float]:
        """FVU, MSE, L0 and dead fraction on held-out rows in eval mode (see validation.py)."""
        cfg = self.config
        return validate(
            self.sae,
            self.source.loader("val", cfg.batch_size, seed=cfg.seed),
            scale=self.scale,
            max_batches=cfg.val_batches,
            device=self.device,
            autocast=self._autocast,
        )


def train(
    config: TrainConfig,
    source: Any,
    run_dir: str | Path,
    *,
    sae: SAE | None = None,
    resume: bool = True,
) -> SAE:
    """Train (or resume) an SAE; the result is also saved to run_dir/sae.

    source: a store URL or ActivationStore (with config.point), an ActivationLoader,
    a (N, d) tensor of rows, or a RowSource such as ModelSource (live capture).
    """
    return Trainer(config, source, run_dir, sae=sae, resume=resume).fit()


def build_sae(config: TrainConfig, d_model: int) -> SAE:
    """A fresh SAE of the configured architecture (config must be resolved)."""
    # The init draws from torch's global RNG: seed it, without disturbing the caller's.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        try:
            return SAE_REGISTRY[config.architecture].from_train_config(config, d_model)
        except (RuntimeError, MemoryError) as err:
            if not isinstance(err, MemoryError) and "alloc" not in str(err).lower():
                raise
            size = config.nb_concepts * d_model * getattr(torch, config.dtype).itemsize
            raise ValueError(
                f"nb_concepts={config.nb_concepts} x d={d_model}: the SAE's matrices need "
                f"{2 * size / 1e9:.3g} GB and cannot be allocated on {config.device} "
                f"({str(err).splitlines()[0]}); lower nb_concepts or expansion_factor"
            ) from None


def _config_for_sae(config: TrainConfig, sae: SAE, d: int) -> TrainConfig:
    """Check that a user-built SAE fits the config and the data; fill nb_concepts from it."""
    arch = getattr(sae, "architecture", None)
    if arch != config.architecture:
        raise ValueError(
            f"the SAE is a {arch!r} SAE but config.architecture={config.architecture!r}"
        )
    if sae.input_size != d:
        raise ValueError(f"the SAE takes rows of width {sae.input_size}, the source has {d}")
    if config.nb_concepts not in (None, sae.nb_concepts):
        raise ValueError(
            f"config.nb_concepts={config.nb_concepts} but the SAE has {sae.nb_concepts} concepts"
        )
    budget = {}
    if config.top_k is None and config.k_per_token is None:
        budget = sae.train_budget(config.batch_size)
    return dataclasses.replace(config, nb_concepts=sae.nb_concepts, expansion_factor=None, **budget)
