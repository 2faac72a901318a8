"""The training loop: one Adam step per batch, metrics kept on device between logs.

The hot loop never waits for the device except at log steps (metric sums, fire
counts and the adaptive sparsity coefficient all live on device) and at the
dead-latent check, which runs at most once per log interval and decides whether
the AuxK loss is computed at all; with no dead latent it costs nothing.

Scale: rows are multiplied by s, chosen so that E||s x||^2 = d, and the SAE trains
with input_scale = 1. The SAE handed back and saved to run_dir/sae has
input_scale = s, so it runs on raw activations with the same codes and the same FVU.

Data parallel: under `accelerate launch` / `torchrun` (see distributed.py) every
rank trains on its slice of each global batch of `batch_size` rows and one
all-reduce per step keeps the replicas identical. Rank 0 alone writes checkpoints,
logs and the final SAE; a checkpoint resumes under any number of processes.
BatchTopK keeps its budget per rank: top_k / world codes of each local batch.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from ..metrics import DENSE_FRACTION
from . import checkpoint
from .config import RESUME_FREE_FIELDS, TrainConfig
from .constraints import constrained_weight, normalize_rows_, remove_parallel_gradient_
from .distributed import Processes, RankSlice, processes
from .init import init_decoder_bias_, tie_encoder_to_dictionary_
from .losses import aux_k_loss
from .runlog import RunLog
from .schedule import coefficient_factor, lr_factor
from .sources import Loader, RowSource, as_source

# Running sums kept on device between log steps, in this order.
_SUMS = ("loss", "mse", "sq_err", "sq_dev", "l0", "aux_loss")


class Trainer:
    """Trains one SAE on one source; `fit()` runs (or resumes) to the configured end."""

    def __init__(
        self,
        config: TrainConfig,
        source: Any,
        run_dir: str | Path,
        *,
        sae: torch.nn.Module | None = None,
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
        self.procs = procs = processes()
        if cfg.batch_size % procs.world:
            raise ValueError(
                f"batch_size={cfg.batch_size} is not divisible by the {procs.world} processes; "
                "each rank trains on batch_size // world rows of every global batch"
            )
        self.device = torch.device(procs.device(cfg.device))

        found = checkpoint.find(self.run_dir)
        _check_same_checkpoint(procs, found, self.device, self.run_dir)
        if found is not None and not resume:
            raise FileExistsError(
                f"{self.run_dir} already holds a checkpoint; pass resume=True to continue it "
                "or choose another run_dir"
            )
        self.sae = sae if sae is not None else build_sae(cfg, d)
        self.sae.to(self.device, dtype=getattr(torch, cfg.dtype))
        self.sae.train()
        self.optimizer = torch.optim.Adam(
            self.sae.parameters(), lr=cfg.lr, betas=cfg.adam_betas, eps=cfg.adam_eps
        )
        self.loader: Loader = self.source.loader("train", cfg.batch_size, seed=cfg.seed)
        if procs.distributed:
            self.loader = RankSlice(self.loader, procs)
        self._local_top_k = _local_top_k(self.sae, procs)
        self._constrained = constrained_weight(self.sae)
        self._forward = torch.compile(self.sae) if cfg.compile else self.sae
        self._autocast = (cfg.device.startswith("cuda")) if cfg.autocast is None else cfg.autocast
        self._sparsity = cfg.architecture in ("jumprelu", "relu")
        self._dead_check_every = max(
            1, min(cfg.log_every, math.ceil(cfg.dead_tokens / cfg.batch_size / 10))
        )

        n = cfg.nb_concepts
        self.since_fired = torch.zeros(n, dtype=torch.int64, device=self.device)
        self.window_fires = torch.zeros(n, dtype=torch.int64, device=self.device)
        self.sums = torch.zeros(len(_SUMS), device=self.device)
        base = cfg.l0_coefficient if cfg.architecture == "jumprelu" else cfg.l1_coefficient
        self.coefficient = torch.tensor(float(base), device=self.device)
        self.step = 0
        self.aux_active = False
        self._window_steps = 0

        if found is not None:
            self._restore(found)
        else:
            self.scale = self._initialise()
            self._broadcast_initial_state()
        self.log: RunLog | _NoLog = (
            RunLog(
                self.run_dir,
                resume_step=self.step if found is not None else None,
                tensorboard=cfg.tensorboard,
                wandb_project=cfg.wandb_project,
                config=cfg.to_dict(),
            )
            if procs.is_main
            else _NoLog()
        )

    # ------------------------------------------------------------------ set-up

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
        tie_encoder_to_dictionary_(self.sae)
        init_decoder_bias_(self.sae, sample * scale, cfg.b_dec_init)
        if cfg.architecture == "jumprelu":
            self.sae.log_threshold.fill_(math.log(cfg.threshold_init))
        return scale

    def _broadcast_initial_state(self) -> None:
        """Every rank starts from rank 0's SAE, whatever its own sample gave."""
        if not self.procs.distributed:
            return
        for tensor in self.sae.state_dict().values():
            self.procs.broadcast_(tensor)
        self.scale = self.procs.broadcast_object(self.scale)

    def _restore(self, path: Path) -> None:
        saved = TrainConfig.from_dict(json.loads((path / "state.json").read_text())["config"])
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
        tensors, state = checkpoint.load(
            path, sae=self.sae, optimizer=self.optimizer, device=self.device
        )
        self.since_fired, self.window_fires = tensors["since_fired"], tensors["window_fires"]
        self.sums, self.coefficient = tensors["sums"], tensors["coefficient"]
        self.step, self.scale = state["step"], state["scale"]
        self.aux_active, self._window_steps = state["aux_active"], state["window_steps"]
        self.loader.load_state_dict(state["loader"])

    def save_checkpoint(self) -> Path:
        """Write a checkpoint (rank 0 only: the ranks hold identical state)."""
        if not self.procs.is_main:
            return self.run_dir / checkpoint.CHECKPOINT
        return checkpoint.save(
            self.run_dir,
            sae=self.sae,
            optimizer=self.optimizer,
            tensors={
                "since_fired": self.since_fired,
                "window_fires": self.window_fires,
                "sums": self.sums,
                "coefficient": self.coefficient,
            },
            state={
                "step": self.step,
                "scale": self.scale,
                "aux_active": self.aux_active,
                "window_steps": self._window_steps,
                "loader": self.loader.state_dict(),
                "config": self.config.to_dict(),
            },
        )

    # ------------------------------------------------------------------ the loop

    def fit(self, until_step: int | None = None) -> torch.nn.Module:
        """Train to `until_step` (default: the end), checkpoint, and return the SAE.

        At the end of the run the SAE is saved to run_dir/sae with input_scale set,
        so both it and the returned module run on raw activations.
        """
        cfg = self.config
        stop = cfg.steps if until_step is None else min(until_step, cfg.steps)
        main = self.procs.is_main
        self.sae.input_scale.fill_(1.0)
        self.sae.train()
        if main:
            cfg.to_json(self.run_dir / "config.json")
        batches = _full_batches(self.loader, cfg.batch_size // self.procs.world)
        bar = tqdm(
            total=cfg.steps, initial=self.step, disable=not (cfg.progress and main), desc="train"
        )
        self._tic, self._tic_step = time.perf_counter(), self.step
        with self._rank_budget():
            self._loop(stop, batches, bar)
        if self.step == cfg.steps:
            self.sae.input_scale.fill_(self.scale)
            self.sae.eval()
            if main:
                self.sae.save(self.run_dir / "sae")
        self.log.close()
        self.procs.barrier()  # the saved files exist for every rank once fit returns
        return self.sae

    def _loop(self, stop: int, batches: Iterator[torch.Tensor], bar: tqdm) -> None:
        cfg = self.config
        try:
            while self.step < stop:
                x = next(batches).to(self.device, torch.float32, non_blocking=True) * self.scale
                self.train_step(x)
                self.step += 1
                bar.update(1)
                if self.step % self._dead_check_every == 0:
                    self._check_dead()
                if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                    bar.set_postfix(self._log_train(), refresh=False)
                if cfg.val_every and self.step % cfg.val_every == 0 and self.step < cfg.steps:
                    self._log_validation()
                if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0:
                    self.save_checkpoint()
            if self.step == cfg.steps:
                self._log_validation()
            self.save_checkpoint()
        finally:
            bar.close()

    @contextlib.contextmanager
    def _rank_budget(self) -> Iterator[None]:
        """BatchTopK keeps top_k / world codes of each rank's batch while training."""
        if self._local_top_k is None:
            yield
            return
        top_k, self.sae.top_k = self.sae.top_k, self._local_top_k
        try:
            yield
        finally:
            self.sae.top_k = top_k

    def train_step(self, x: torch.Tensor) -> None:
        cfg, sae = self.config, self.sae
        lr = cfg.lr * lr_factor(self.step, cfg.steps, cfg.warmup_steps, cfg.decay_fraction)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self._autocast):
            out = self._forward(x)
            err = x - out.x_hat.float()
            mse = err.pow(2).sum(-1).mean()
            loss = mse
            if self._sparsity:
                loss = loss + self._coefficient_at(self.step) * sae.sparsity_loss(out).float()
            aux = torch.zeros((), device=self.device)
            if self.aux_active:
                dead = self.since_fired >= cfg.dead_tokens
                aux = aux_k_loss(err.detach(), out.z_pre, dead, sae.get_dictionary(), cfg.aux_k)
                if self.procs.distributed:
                    aux = aux * self._global_aux_scale(err.detach())
                loss = loss + cfg.aux_coefficient * aux
        loss.backward()
        with torch.no_grad():
            fires = (out.z.detach() > 0).sum(0)
        if self.procs.distributed:
            fires = self._all_reduce(fires)
        if self._constrained is not None:
            remove_parallel_gradient_(self._constrained)
        if cfg.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(sae.parameters(), cfg.grad_clip, foreach=True)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self._constrained is not None:
            normalize_rows_(self._constrained)

        with torch.no_grad():
            rows = x.shape[0] * self.procs.world
            l0 = fires.sum() / rows
            self.since_fired = torch.where(fires > 0, 0, self.since_fired + rows)
            self.window_fires += fires
            sq_dev = (x - x.mean(0)).pow(2).sum()
            self.sums += torch.stack(
                [loss.detach(), mse.detach(), err.pow(2).sum(), sq_dev, l0, aux.detach()]
            ).float()
            if cfg.target_l0 is not None:
                error = torch.log(l0.clamp_min(1e-2) / cfg.target_l0).clamp(-1.0, 1.0)
                self.coefficient *= torch.exp(cfg.target_l0_gain * error)
        self._window_steps += 1

    @torch.no_grad()
    def _global_aux_scale(self, residual: torch.Tensor) -> torch.Tensor:
        """world * D_rank / D_global: turns this rank's AuxK loss into its share of the global one.

        AuxK divides the summed squared error by D = sum ||e - mean(e)||^2 over the
        batch, a constant for the gradient; with D of the global batch, the mean of
        the ranks' losses is the single-process loss. One all-reduce of d + 1 values.
        """
        e = residual.double()
        local = (e - e.mean(0)).pow(2).sum()
        sums = self.procs.all_reduce_sum_(torch.cat([e.sum(0), e.pow(2).sum().reshape(1)]))
        n = e.shape[0] * self.procs.world
        total = sums[-1] - sums[:-1].pow(2).sum() / n
        return (self.procs.world * local / total.clamp_min(1e-12)).float()

    @torch.no_grad()
    def _all_reduce(self, fires: torch.Tensor) -> torch.Tensor:
        """One all-reduce per step: mean gradients and floating buffers, summed fire counts.

        Each rank's loss is a mean over its equal share of the global batch, so the
        mean of the ranks' gradients is the gradient of the global batch's loss.
        Averaging BatchTopK's running threshold after its EMA update is the EMA of the
        ranks' mean batch threshold. Parameters without a gradient (the same ones on
        every rank) stay without one, as in a single process.
        """
        grads = [p.grad for p in self.sae.parameters() if p.grad is not None]
        buffers = [b for b in self.sae.buffers() if b.is_floating_point()]
        dtype = torch.promote_types(grads[0].dtype if grads else torch.float32, torch.float32)
        flat = torch.cat([t.reshape(-1).to(dtype) for t in [*grads, *buffers, fires]])
        self.procs.all_reduce_sum_(flat)
        world, offset = self.procs.world, 0
        for t in [*grads, *buffers]:
            t.copy_(flat[offset : offset + t.numel()].view_as(t) / world)
            offset += t.numel()
        return flat[offset:].round().to(fires.dtype)

    def _coefficient_at(self, step: int) -> torch.Tensor:
        cfg = self.config
        if cfg.target_l0 is not None:
            return self.coefficient
        return self.coefficient * coefficient_factor(step, cfg.steps, cfg.sparsity_warmup_fraction)

    def _check_dead(self) -> None:
        if self.config.aux_coefficient > 0:
            self.aux_active = bool((self.since_fired >= self.config.dead_tokens).any())

    # ------------------------------------------------------------------ metrics

    def _log_train(self) -> dict[str, float]:
        cfg = self.config
        if self.procs.distributed:  # local means averaged over equal shares: global means
            self.procs.all_reduce_sum_(self.sums).div_(self.procs.world)
        sums = dict(zip(_SUMS, self.sums.tolist()))
        if not math.isfinite(sums["loss"]):
            raise FloatingPointError(
                f"the training loss became {sums['loss']} between steps {self._tic_step} and "
                f"{self.step}; the last checkpoint in {self.run_dir} is from before it. Lower "
                "lr, or check the activations for overflow"
            )
        n, tokens = max(self._window_steps, 1), max(self._window_steps, 1) * cfg.batch_size
        now = time.perf_counter()
        record = {
            "loss": sums["loss"] / n,
            "mse": sums["mse"] / n,
            "fvu": sums["sq_err"] / max(sums["sq_dev"], 1e-12),
            "l0": sums["l0"] / n,
            "dead_fraction": float((self.since_fired >= cfg.dead_tokens).float().mean()),
            "dense_fraction": float(
                (self.window_fires.float() / tokens > DENSE_FRACTION).float().mean()
            ),
            "aux_loss": sums["aux_loss"] / n,
            "lr": cfg.lr
            * lr_factor(self.step - 1, cfg.steps, cfg.warmup_steps, cfg.decay_fraction),
            "tokens_per_s": (self.step - self._tic_step) * cfg.batch_size / (now - self._tic),
        }
        if self._sparsity:
            name = "l0_coefficient" if cfg.architecture == "jumprelu" else "l1_coefficient"
            record[name] = float(self._coefficient_at(self.step - 1))
        self.log.write({"step": self.step, "tokens": self.step * cfg.batch_size, **record})
        self.sums.zero_()
        self.window_fires.zero_()
        self._window_steps = 0
        self._tic, self._tic_step = now, self.step
        return {k: round(record[k], 4) for k in ("loss", "fvu", "l0")}

    def _log_validation(self) -> None:
        if self.procs.is_main:  # the ranks hold the same SAE: one of them validates
            self.log.write({"step": self.step, **self.validate()})

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """FVU, MSE and L0 in eval mode, and the share of latents silent on held-out rows."""
        cfg = self.config
        loader = self.source.loader("val", cfg.batch_size, seed=cfg.seed)
        sq_err = sq_dev = mse = l0 = 0.0
        fired = torch.zeros(cfg.nb_concepts, dtype=torch.bool, device=self.device)
        n_batches = 0
        self.sae.eval()
        try:
            for batch in loader:
                if n_batches == cfg.val_batches:
                    break
                x = batch.to(self.device, torch.float32) * self.scale
                with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self._autocast):
                    out = self.sae(x)
                err = x - out.x_hat.float()
                active = out.z > 0
                fired |= active.any(0)
                sq_err += float(err.pow(2).sum())
                sq_dev += float((x - x.mean(0)).pow(2).sum())
                mse += float(err.pow(2).sum(-1).mean())
                l0 += float(active.sum(-1).float().mean())
                n_batches += 1
        finally:
            self.sae.train()
        if n_batches == 0:
            return {}
        return {
            "val/fvu": sq_err / max(sq_dev, 1e-12),
            "val/mse": mse / n_batches,
            "val/l0": l0 / n_batches,
            "val/dead_fraction": float((~fired).float().mean()),
        }


def train(
    config: TrainConfig,
    source: Any,
    run_dir: str | Path,
    *,
    sae: torch.nn.Module | None = None,
    resume: bool = True,
) -> torch.nn.Module:
    """Train (or resume) an SAE; the result is also saved to run_dir/sae.

    source: a store URL or ActivationStore (with config.point), an ActivationLoader,
    a (N, d) tensor of rows, or a RowSource such as ModelSource (live capture).
    """
    return Trainer(config, source, run_dir, sae=sae, resume=resume).fit()


def build_sae(config: TrainConfig, d_model: int) -> torch.nn.Module:
    """A fresh SAE of the configured architecture (config must be resolved)."""
    from sae_hooks.sae import SAE_REGISTRY

    kwargs: dict[str, Any] = dict(config.extra)
    if config.architecture == "batchtopk":
        kwargs.update(top_k=config.top_k, threshold_momentum=config.threshold_momentum)
    elif config.architecture == "topk":
        kwargs.update(top_k=config.top_k)
    elif config.architecture == "jumprelu":
        kwargs.update(kernel=config.kernel, bandwidth=config.bandwidth)
    # The init draws from torch's global RNG: seed it, without disturbing the caller's.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        return SAE_REGISTRY[config.architecture](
            d_model, config.nb_concepts, device=config.device, **kwargs
        )


def _config_for_sae(config: TrainConfig, sae: torch.nn.Module, d: int) -> TrainConfig:
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
    if arch in ("batchtopk", "topk") and config.top_k is None and config.k_per_token is None:
        if getattr(sae, "top_k_per_sample", None) is not None:
            budget = {"top_k": round(sae.top_k_per_sample * config.batch_size)}
        else:
            budget = {"top_k": sae.top_k}
    return dataclasses.replace(config, nb_concepts=sae.nb_concepts, expansion_factor=None, **budget)


def _local_top_k(sae: torch.nn.Module, procs: Processes) -> int | None:
    """A BatchTopK SAE's per-rank budget of codes, when it counts codes per batch."""
    if not procs.distributed or getattr(sae, "architecture", None) != "batchtopk":
        return None
    if getattr(sae, "top_k_per_sample", None) is not None:
        return None  # a per-row budget already scales with the local batch
    if sae.top_k % procs.world:
        raise ValueError(
            f"BatchTopK top_k={sae.top_k} codes per global batch is not divisible by the "
            f"{procs.world} processes; each rank keeps top_k // world codes of its rows. "
            "Use k_per_token (top_k = k_per_token * batch_size) or a divisible top_k"
        )
    return sae.top_k // procs.world


def _check_same_checkpoint(
    procs: Processes, found: Path | None, device: torch.device, run_dir: Path
) -> None:
    """Every rank must resume from the same checkpoint, or none may."""
    if not procs.distributed:
        return
    seen = procs.all_reduce_sum_(torch.tensor([float(found is not None)], device=device))
    if 0 < int(seen.item()) < procs.world:
        raise RuntimeError(
            f"only {int(seen.item())} of {procs.world} processes see a checkpoint in {run_dir}; "
            "run_dir must be on a filesystem every rank (every node) can read"
        )


class _NoLog:
    """The metric log of ranks other than 0: they compute metrics but write nothing."""

    def write(self, record: dict[str, Any]) -> None:
        pass

    def close(self) -> None:
        pass


def _full_batches(loader: Loader, batch_size: int) -> Iterator[torch.Tensor]:
    """Endless batches of exactly batch_size rows, epoch after epoch.

    A short last batch of an epoch is skipped: BatchTopK's budget is per batch, so
    every training step must see the same number of rows.
    """
    while True:
        n = 0
        for batch in loader:
            if batch.shape[0] == batch_size:
                n += 1
                yield batch
        if n == 0:
            raise ValueError(
                f"the training split yields no full batch of {batch_size} rows; "
                "lower batch_size or add data"
            )
