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
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from sae_hooks.activations import Batch, full_batches, to_training
from sae_hooks.devices import available_device
from sae_hooks.distributed import processes, sample_on_main, share_of, sync_replicas_
from sae_hooks.sae import SAE, SAE_REGISTRY
from sae_hooks.sae.sparse_encoder import fire_counts

from . import checkpoint, host_heap, runlock, trainer_state
from .coefficient import SparsityCoefficient
from .config import TrainConfig
from .constraints import (
    clip_grad_norm_,
    constrained_weight,
    normalize_rows_,
    remove_parallel_gradient_,
    unit_rows_forward,
)
from .init import initialise_from_data
from .losses import trainer_aux_loss
from .runlog import NoLog, RunLog
from .schedule import lr_factor
from .sources import Loader, RowSource, as_source
from .step_metrics import StepMetrics
from .validation import validate
from .window import DeadLatents, LogWindow


@dataclasses.dataclass
class PendingStep:
    """What `Trainer.backward` leaves for `Trainer.apply`: the rows the SAE reconstructs
    (a transcoder's target), the reconstruction, the per-latent fire counts (all-reduced
    in between under data parallel), the losses, and x - x_hat (for the log's FVU)."""

    x: torch.Tensor
    x_hat: torch.Tensor
    fires: torch.Tensor
    loss: torch.Tensor
    mse: torch.Tensor
    aux: torch.Tensor
    err: torch.Tensor | None = None


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
        if "://" in str(run_dir):  # checkpoints, log and lock need a filesystem (scaling.md)
            raise ValueError(
                f"run_dir {run_dir} is a URL; a run directory must be a local or shared "
                "filesystem path (stores may be URLs: s3://, gs://, ...)"
            )
        self.run_dir = Path(run_dir)
        self.source: RowSource = as_source(source, config.point, config.target_point)
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
        if self.device.type == "cpu":  # the step's buffers reused, not faulted in anew
            host_heap.keep_freed_memory()
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
            trainer_state.check_resumable(cfg, found, state)
        self._build(sae if sae is not None else build_sae(cfg, d))
        if found is not None:
            self.load_state_dict(
                trainer_state.load(
                    found,
                    sae=self.sae,
                    optimizer=self.optimizer,
                    device=self.device,
                    like=self.state_dict(),
                )
            )
        else:
            source = sample_on_main(self.source, rank, self.device)  # rank 0 reads it
            self.scale = initialise_from_data(self.sae, source, cfg, self._constrained, self.device)
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
            self.sae.parameters(),
            lr=cfg.lr,
            betas=cfg.adam_betas,
            eps=cfg.adam_eps,
            fused=_fused_adam(self.device, self.sae),
        )
        loader = self.source.loader("train", cfg.batch_size, seed=cfg.batch_seed)
        # rank r reads only its streams of the store (docs/scaling.md)
        self.loader: Loader = share_of(loader, self.rank.rank, self.rank.world, cfg.loader_streams)
        self._constrained = constrained_weight(self.sae)
        self._forward = torch.compile(self.sae) if cfg.compile else self.sae
        dtype = getattr(torch, cfg.dtype)
        low = dtype in (torch.bfloat16, torch.float16)
        # bf16 autocast on CUDA; bf16 / fp16 parameters compute in their dtype anywhere
        # (fp32 rows and the fp32 centring then meet them through autocast's casts)
        self._autocast = (
            (cfg.device.startswith("cuda") or low) if cfg.autocast is None else cfg.autocast
        )
        self._autocast_dtype = dtype if low else torch.bfloat16
        self._dead_check_every = max(
            1, min(cfg.log_every, math.ceil(cfg.dead_tokens / cfg.batch_size / 10))
        )
        self.dead = DeadLatents(cfg.nb_concepts, cfg.dead_tokens, self.device)
        self.window = LogWindow(cfg.nb_concepts, self.device, rows_per_step=cfg.batch_size)
        self.coefficient = SparsityCoefficient(cfg, self.device)
        self.step = 0
        self.scale = 1.0
        self.aux_active = False
        self.metrics = StepMetrics(
            cfg,
            window=self.window,
            dead=self.dead,
            coefficient=self.coefficient,
            rank=self.rank,
            run_dir=self.run_dir,
        )

    def state_dict(self) -> dict[str, Any]:
        """The checkpoint dict (nanoGPT's): the state_dicts of the parts, the loop's
        counters, the loader's position and the config (SAE and optimiser aside)."""
        return {
            "parts": {
                "dead": self.dead.state_dict(),
                "coefficient": self.coefficient.state_dict(),
                "window": self.window.state_dict(),
            },
            "step": self.step,
            "scale": self.scale,
            "aux_active": self.aux_active,
            "loader": self.loader.state_dict(),
            "config": self.config.to_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` holds (the config is checked, not loaded)."""
        parts = state["parts"]
        self.dead.load_state_dict(parts["dead"])
        self.coefficient.load_state_dict(parts["coefficient"])
        self.window.load_state_dict(parts["window"])
        self.step, self.scale = state["step"], state["scale"]
        self.aux_active = state["aux_active"]
        self.loader.load_state_dict(state["loader"])

    def _broadcast_initial_state(self) -> None:
        """Every rank starts from rank 0's SAE, whatever its own sample gave."""
        if not self.rank.distributed:
            return
        for tensor in self.sae.state_dict().values():
            self.rank.broadcast_(tensor)
        self.scale = self.rank.broadcast_object(self.scale)

    def save_checkpoint(self) -> Path:
        """Write a checkpoint (rank 0 only: the ranks hold identical state)."""
        if not self.rank.is_main:
            return self.run_dir / checkpoint.CHECKPOINT
        return trainer_state.save(
            self.run_dir, sae=self.sae, optimizer=self.optimizer, state=self.state_dict()
        )

    # ------------------------------------------------------------------ the loop

    def fit(self, until_step: int | None = None) -> SAE:
        """Train to `until_step` (default: the end), checkpoint, and return the SAE.

        At the end of the run the SAE is saved to run_dir/sae with input_scale set,
        so both it and the returned module run on raw activations. Stopped earlier
        (until_step), the module returned is the training state: train mode, and
        input_scale 1 (it reads rows already scaled); fit again to finish the run.
        """
        main = self.rank.is_main
        try:
            stop = self.config.steps if until_step is None else min(until_step, self.config.steps)
            batches = self.start_fit()
            bar = self.progress_bar()
            with self.sae.rank_share(self.rank.world):
                try:
                    while self.step < stop:
                        x = to_training(next(batches), self.device, self.scale, non_blocking=True)
                        self.train_step(x)
                        self.after_step(bar)
                    self.end_loop()
                finally:
                    bar.close()
            return self.finish_fit()
        finally:
            if main:  # also when training fails: a dead run holds no lock
                runlock.release(self.run_dir)

    # The pieces of `fit`, public so that `train_many` can drive several Trainers from
    # one shared batch stream: start_fit, then per step train_step + after_step, then
    # end_loop and finish_fit (start_fit takes the run directory's lock, finish_fit frees it).

    def start_fit(self) -> Iterator[Batch]:
        """Hold the run directory, put the SAE in training mode, record config.json; the
        batch stream of `loader`."""
        if self.rank.is_main:
            runlock.acquire(self.run_dir)  # again: a fit after an earlier fit released it
        self.sae.set_input_scale(1.0, training=True)
        self.sae.train()
        if self.rank.is_main:
            self.config.to_json(self.run_dir / "config.json")
        self.metrics.restart(self.step)
        return full_batches(self.loader, self.config.batch_size // self.rank.world)

    def progress_bar(self, desc: str = "train") -> tqdm:
        cfg = self.config
        show = cfg.progress and self.rank.is_main
        return tqdm(total=cfg.steps, initial=self.step, disable=not show, desc=desc)

    def after_step(self, bar: tqdm | None = None) -> None:
        """Count the step just taken; dead check, log, validation, checkpoint when due."""
        cfg = self.config
        self.step += 1
        if bar is not None:
            bar.update(1)
        if self.step % self._dead_check_every == 0 and cfg.aux_coefficient > 0:
            self.aux_active = self.dead.any()
        if self.step % cfg.log_every == 0 or self.step == cfg.steps:
            postfix = self.metrics.log_train(self.step, self.log)
            if bar is not None:
                bar.set_postfix(postfix, refresh=False)
        if cfg.val_every and self.step % cfg.val_every == 0 and self.step < cfg.steps:
            self.metrics.log_validation(self.step, self.log, self.validate)
        if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0:
            self.save_checkpoint()

    def end_loop(self) -> None:
        """Final validation (at the end of the run) and a checkpoint at the stop step."""
        if self.step == self.config.steps and not self.log.has(self.step, "val/fvu"):
            self.metrics.log_validation(
                self.step, self.log, self.validate
            )  # once: a rerun of a finished run adds no line
        self.save_checkpoint()

    def finish_fit(self) -> SAE:
        """At the end of the run, save the SAE with input_scale set; close the log."""
        if self.step == self.config.steps:
            self.sae.set_input_scale(self.scale)
            self.sae.eval()
            if self.rank.is_main:
                self.sae.save(self.run_dir / "sae")
        self.log.close()
        if self.rank.is_main:
            runlock.release(self.run_dir)
        self.rank.barrier()  # the saved files exist for every rank once fit returns
        return self.sae

    def train_step(self, x: Batch) -> None:
        """One optimiser step on this rank's rows x (already scaled)."""
        pending = self.backward(x)
        if self.rank.distributed:
            pending.fires = sync_replicas_(self.sae, pending.fires, self.rank)
        self.apply(pending)

    def backward(self, x: Batch) -> PendingStep:
        """Forward and backward on x (already scaled): gradients set, not yet applied.

        Data parallel: the caller all-reduces the gradients and `fires` (train_step does
        it for this SAE alone, train_many once for all its SAEs) before `apply`."""
        cfg, sae = self.config, self.sae
        lr = cfg.lr * lr_factor(self.step, cfg.steps, cfg.warmup_steps, cfg.decay_fraction)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        autocast = torch.autocast(
            self.device.type, dtype=self._autocast_dtype, enabled=self._autocast
        )
        # The rows are unit norm here (normalised at init, after every step, in every
        # checkpoint): the dictionary skips its normalisation, `_optimizer_step`'s
        # projection gives the gradient that normalisation's backward would have.
        with autocast, unit_rows_forward(sae), sae.sparse_codes():
            x, target = sae.training_pair(x)
            with sae.step_phase(self.step, cfg, self.rank.all_gather):
                out = self._forward(x)
            err = target - out.x_hat.float()
            mse = sae.reconstruction_loss(err, out)
            loss = mse
            if self.coefficient.active:
                loss = loss + self.coefficient.at(self.step) * sae.sparsity_loss(out).float()
            aux = trainer_aux_loss(
                err.detach(),
                out.z_pre,
                active=self.aux_active,
                dead=self.dead,
                sae=sae,
                k_aux=cfg.aux_k,
                rank=self.rank,
                device=self.device,
                support=out.support,
            )
            loss = loss + cfg.aux_coefficient * aux
        x_hat = out.x_hat.detach()
        fires = fire_counts(out)  # from the kept support where the forward recorded it
        # The sparse paths' backward keeps no (rows, n) tensor: dropping the output frees
        # the pre-codes before the backward allocates the gradients (peak memory).
        del out
        loss.backward()
        losses = (loss.detach(), mse.detach(), aux.detach())
        return PendingStep(target, x_hat, fires, *losses, err=err.detach())

    def apply(self, pending: PendingStep) -> None:
        """The optimiser step and the on-device statistics of a `backward` (synced)."""
        self._optimizer_step()
        with torch.no_grad():
            x, fires = pending.x, pending.fires
            rows = x.shape[0] * self.rank.world
            self.dead.update(fires, rows)
            self.coefficient.steer(fires.sum() / rows)
            losses = torch.stack([pending.loss, pending.mse, pending.aux])
            self.window.add(losses, x, pending.x_hat, fires, rows, pending.err)

    def _optimizer_step(self) -> None:
        """Clip, step, and keep the decoder rows on the unit sphere."""
        if self._constrained is not None:
            remove_parallel_gradient_(self._constrained, unit_rows=True)
        if self.config.grad_clip is not None:
            clip_grad_norm_(list(self.sae.parameters()), self.config.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self._constrained is not None:
            normalize_rows_(self._constrained)

    def validate(self) -> dict[str, float]:
        """FVU, MSE, L0 and dead fraction on held-out rows in eval mode (see validation.py)."""
        cfg = self.config
        return validate(
            self.sae,
            self.source.loader("val", cfg.batch_size, seed=cfg.seed),
            scale=self.scale,
            max_batches=cfg.val_batches,
            device=self.device,
            autocast=self._autocast_dtype if self._autocast else None,
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


def _fused_adam(device: torch.device, sae: SAE) -> bool | None:
    """One fused kernel per Adam step (torch >= 2.4 on CPU and CUDA): on CPU the
    for-loop Adam made ~10 passes over each (n, d) weight, a third of a sparse step."""
    floating = all(p.is_floating_point() for p in sae.parameters())
    return True if device.type in ("cpu", "cuda") and floating else None


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
    variant = config.variant  # the SAE's own budget unless the config gives one
    if getattr(variant, "top_k", None) is None and getattr(variant, "k_per_token", None) is None:
        variant = dataclasses.replace(variant, **sae.train_budget(config.batch_size))
    return dataclasses.replace(
        config, nb_concepts=sae.nb_concepts, expansion_factor=None, variant=variant
    )
