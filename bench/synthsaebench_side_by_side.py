"""SynthSAEBench side by side: sae-hooks and SAELens train the same five variants on the
same rows, and the same code scores both (issue 31, item 7).

One dataset (a generator preset, seed 0; by default "2k": 2,048 features, d = 128, L0 ~6,
the paper's L0/d) is drawn once; every run sees the same rows in the same order, at the
same width (one latent a true feature), L0 target (k = 4 by default: the paper's 25
against its true L0 34, scaled), steps, batch size and constant learning rate (3e-3: at
1e-3 both libraries learn less in 2,000 steps; docs/evaluation.md). Scores on
8,192 held-out rows: Hungarian MCC and per-latent F1 as the paper defines them,
absorption (Hungarian-matched; sae_hooks.eval.synthetic.absorption), FVU and L0.

    PYTHONPATH=$PWD nice /work/venv-peers/bin/python bench/synthsaebench_side_by_side.py \\
        --steps 2000 --seeds 0 1 2 --out /tmp/ssb

Each finished run is appended to OUT/runs.jsonl (a rerun skips the runs already there);
the summary (mean +- std over seeds) is printed and written to OUT/summary.md;
`--merge A/runs.jsonl B/runs.jsonl` prints the summary of runs made in parallel processes
(e.g. one per `--libs`).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from itertools import accumulate
from pathlib import Path

import torch

from sae_hooks import metrics
from sae_hooks.eval.synthetic import sparsity_fields
from sae_hooks.eval.synthsaebench import PRESETS, dictionary_metrics, synthsaebench
from sae_hooks.sae.matryoshka import default_group_sizes
from sae_hooks.sae.modes import eval_mode

ARCHS = ("batchtopk", "jumprelu", "matryoshka_batchtopk", "topk", "relu")
COLUMNS = ("mcc_hungarian", "f1_latent", "absorption_hungarian", "fvu", "l0")


def train_sae_hooks(arch: str, x: torch.Tensor, a: argparse.Namespace, seed: int, out: Path):
    from sae_hooks.train import TrainConfig, train

    config = TrainConfig(
        architecture=arch,
        nb_concepts=a.width,
        steps=a.steps,
        batch_size=a.batch_size,
        lr=a.lr,
        warmup_steps=0,
        decay_fraction=0.0,
        seed=seed,
        progress=False,
        log_every=max(a.steps // 5, 1),
        val_every=0,
        checkpoint_every=0,
        **sparsity_fields(arch, a.l0),
    )
    sae = train(config, x, str(out / f"hooks_{arch}_{seed}"))

    def codes_and_recon(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        with eval_mode(sae), torch.no_grad():
            return sae.encode(rows)[1], sae(rows).x_hat, sae.get_dictionary()

    return codes_and_recon


def saelens_config(arch: str, a: argparse.Namespace):
    import sae_lens as sl

    common = {"d_in": a.d, "d_sae": a.width}
    k = round(a.l0)
    if arch == "topk":
        return sl.TopKTrainingSAEConfig(k=k, **common)
    if arch == "batchtopk":
        return sl.BatchTopKTrainingSAEConfig(k=k, **common)
    if arch == "matryoshka_batchtopk":  # the same nested widths as sae-hooks's default
        widths = list(accumulate(default_group_sizes(a.width)))
        return sl.MatryoshkaBatchTopKTrainingSAEConfig(k=k, matryoshka_widths=widths, **common)
    if arch == "jumprelu":  # GemmaScope-2's quadratic loss: SAELens's L0-target mode
        return sl.JumpReLUTrainingSAEConfig(
            jumprelu_sparsity_loss_mode="quadratic", target_l0=a.l0, **common
        )
    return sl.StandardTrainingSAEConfig(**common)  # relu: L1 at SAELens's default coefficient


def train_saelens(arch: str, x: torch.Tensor, a: argparse.Namespace, seed: int, out: Path):
    from sae_lens import TrainingSAE
    from sae_lens.config import LoggingConfig, SAETrainerConfig
    from sae_lens.training.sae_trainer import SAETrainer

    torch.manual_seed(seed)
    sae = TrainingSAE.from_dict(saelens_config(arch, a).to_dict())
    batches = (x[i : i + a.batch_size] for i in range(0, a.steps * a.batch_size, a.batch_size))
    cfg = SAETrainerConfig(
        n_checkpoints=0,
        checkpoint_path=None,
        save_final_checkpoint=False,
        total_training_samples=a.steps * a.batch_size,
        device="cpu",
        autocast=False,
        lr=a.lr,
        lr_end=a.lr,
        lr_scheduler_name="constant",
        lr_warm_up_steps=0,
        adam_beta1=0.9,
        adam_beta2=0.999,
        lr_decay_steps=0,
        n_restart_cycles=1,
        train_batch_size_samples=a.batch_size,
        dead_feature_window=1000,
        feature_sampling_window=2000,
        logger=LoggingConfig(log_to_wandb=False, eval_every_n_wandb_logs=2**31 - 1),
        n_batches_for_norm_estimate=1000,
    )
    SAETrainer(cfg=cfg, sae=sae, data_provider=batches, save_checkpoint_fn=lambda _p: None).fit()
    sae.eval()

    def codes_and_recon(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            z = sae.encode(rows)
            return z, sae.decode(z), sae.W_dec

    return codes_and_recon


def score(world, codes_and_recon, x_eval: torch.Tensor, codes_eval: torch.Tensor) -> dict:
    z, x_hat, dictionary = codes_and_recon(x_eval)
    row = dictionary_metrics(world, dictionary, z, codes_eval)
    row["fvu"] = float(metrics.fvu(x_eval, x_hat.float()))
    row["l0"] = float(metrics.l0(z.float()))
    return row


def summarise(runs: list[dict]) -> str:
    lines = [
        "| variant | library | " + " | ".join(COLUMNS) + " | s/run |",
        "|" + "---|" * (len(COLUMNS) + 3),
    ]
    for arch in ARCHS:
        for lib in ("sae-hooks", "saelens"):
            mine = [r for r in runs if r["arch"] == arch and r["library"] == lib]
            if not mine:
                continue
            cells = []
            for c in COLUMNS:
                vals = [float(r[c]) for r in mine if c in r]
                sd = statistics.stdev(vals) if len(vals) > 1 else float("nan")
                cells.append(f"{statistics.mean(vals):.3f} ± {sd:.3f}")
            secs = statistics.mean(r["seconds"] for r in mine)
            lines.append(
                f"| {arch} | {lib} (n={len(mine)}) | " + " | ".join(cells) + f" | {secs:.0f} |"
            )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="2k", choices=sorted(PRESETS))
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--l0", type=float, default=4.0, help="k / target L0 of every variant")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--archs", nargs="+", default=list(ARCHS), choices=ARCHS)
    p.add_argument("--libs", nargs="+", default=["sae-hooks", "saelens"])
    p.add_argument("--eval-rows", type=int, default=8192)
    p.add_argument("--out", default="/tmp/synthsaebench_side_by_side")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--merge", nargs="+", help="only print the summary of these runs.jsonl files")
    a = p.parse_args()
    if a.merge:
        print(
            summarise([json.loads(ln) for f in a.merge for ln in Path(f).read_text().splitlines()])
        )
        return
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(a.threads)
    world = synthsaebench(a.preset)
    a.d, a.width = world.d, world.n_features
    t0 = time.perf_counter()
    x = world.sample_x(a.steps * a.batch_size, seed=1)
    x_eval, codes_eval = world.sample(a.eval_rows, seed=12345)
    print(
        f"data: {tuple(x.shape)} train, true L0 {float((codes_eval > 0).sum(1).float().mean()):.1f}"
        f" ({time.perf_counter() - t0:.0f} s)",
        flush=True,
    )
    log = out / "runs.jsonl"
    runs = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    trainers = {"sae-hooks": train_sae_hooks, "saelens": train_saelens}
    for seed in a.seeds:
        for arch in a.archs:
            for lib in a.libs:
                if any(
                    r["arch"] == arch and r["library"] == lib and r["seed"] == seed for r in runs
                ):
                    continue
                t = time.perf_counter()
                row = score(world, trainers[lib](arch, x, a, seed, out), x_eval, codes_eval)
                row.update(arch=arch, library=lib, seed=seed, seconds=time.perf_counter() - t)
                row.update(preset=a.preset, steps=a.steps, batch_size=a.batch_size, lr=a.lr)
                runs.append(row)
                with log.open("a") as f:
                    f.write(json.dumps(row) + "\n")
                print(json.dumps(row), flush=True)
    table = summarise(runs)
    (out / "summary.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
