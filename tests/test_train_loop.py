"""End-to-end training runs on synthetic data with a known sparse dictionary."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

import sae_hooks.train.losses as losses_module
from sae_hooks.sae import load_sae
from sae_hooks.train import TensorSource, TrainConfig, Trainer, fvu, read_log, train


def sparse_data(n=32768, d=32, n_atoms=128, active=4, seed=0):
    """Rows = 3 * (positive codes, `active` per row) @ unit atoms + an offset."""
    g = torch.Generator().manual_seed(seed)
    atoms = torch.nn.functional.normalize(torch.randn(n_atoms, d, generator=g), dim=-1)
    idx = torch.rand(n, n_atoms, generator=g).argsort(1)[:, :active]
    codes = torch.zeros(n, n_atoms).scatter_(1, idx, 0.5 + torch.rand(n, active, generator=g))
    return 3.0 * codes @ atoms + 1.0, atoms


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These matrices are tiny: a second thread only adds contention on a shared CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def data():
    return sparse_data()


def recovery(sae, atoms):
    """Mean over true atoms of the best cosine with a learned atom."""
    learned = torch.nn.functional.normalize(sae.get_dictionary().detach().float(), dim=-1)
    return (atoms @ learned.T).max(1).values.mean().item()


QUICK = {"log_every": 50, "val_every": None, "checkpoint_every": None, "progress": False}
RECIPES = {
    "batchtopk": {"k_per_token": 4, "steps": 1200},  # converges slower than TopK here
    "topk": {"k_per_token": 4, "steps": 600},
    # Normalised rows have O(1) coordinates: bandwidth / threshold at that scale.
    "jumprelu": {
        "steps": 600,
        "bandwidth": 0.1,
        "threshold_init": 0.1,
        "target_l0": 4.0,
        "l0_coefficient": 0.1,
        "target_l0_gain": 0.05,
    },
    "relu": {"steps": 600, "target_l0": 4.0, "l1_coefficient": 0.1, "target_l0_gain": 0.05},
}


@pytest.mark.slow
@pytest.mark.parametrize("arch", sorted(RECIPES))
def test_recovers_known_dictionary(arch, data, tmp_path):
    rows, atoms = data
    config = TrainConfig(
        architecture=arch, nb_concepts=256, batch_size=256, lr=0.01, **RECIPES[arch], **QUICK
    )
    sae = train(config, TensorSource(rows), tmp_path)
    assert recovery(sae, atoms) > 0.9
    log = read_log(tmp_path)
    last_train = [r for r in log if "l0" in r][-1]
    val = log[-1]
    assert 3.0 <= last_train["l0"] <= 5.0  # at the target L0
    # Held-out rows in eval mode see the sparsity the SAE was trained at; for
    # BatchTopK this checks the running threshold (eval L0 within 20% of train L0).
    assert val["val/l0"] == pytest.approx(last_train["l0"], rel=0.2)
    assert set(val) - {"warnings"} == {"step", "val/fvu", "val/mse", "val/l0", "val/dead_fraction"}


def small_config(**overrides):
    base = {
        "architecture": "batchtopk",
        "nb_concepts": 64,
        "k_per_token": 2,
        "batch_size": 64,
        "steps": 40,
        "lr": 5e-3,
        "log_every": 1,
        "val_every": 15,
        "checkpoint_every": None,
        "progress": False,
    }
    return TrainConfig(**{**base, **overrides})


@pytest.fixture(scope="module")
def small_rows():
    return sparse_data(n=4096, d=16, n_atoms=48, active=2, seed=1)[0]


@pytest.mark.parametrize(
    "overrides",
    [
        {"dead_tokens": 128},  # AuxK switches on mid-run: its state must resume too
        {"architecture": "jumprelu", "k_per_token": None, "target_l0": 3.0, "bandwidth": 0.1},
    ],
    ids=["batchtopk", "jumprelu"],
)
def test_resume_is_exact(overrides, small_rows, tmp_path):
    config = small_config(**overrides)
    whole = train(config, TensorSource(small_rows), tmp_path / "whole")

    Trainer(config, TensorSource(small_rows), tmp_path / "split").fit(until_step=17)
    assert (tmp_path / "split" / "checkpoint" / "state.json").is_file()
    assert not (tmp_path / "split" / "sae").exists()
    resumed = train(config, TensorSource(small_rows), tmp_path / "split")

    for (name, a), b in zip(whole.state_dict().items(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6, msg=name)
    keys = ("loss", "mse", "fvu", "l0", "aux_loss", "val/fvu", "val/l0")
    strip = lambda log: [{k: r.get(k) for k in ("step", *keys)} for r in log]  # noqa: E731
    assert strip(read_log(tmp_path / "whole")) == strip(read_log(tmp_path / "split"))
    if "dead_tokens" in overrides:
        assert any(r.get("aux_loss", 0) > 0 for r in read_log(tmp_path / "whole"))


def test_resume_refuses_a_changed_config(small_rows, tmp_path):
    Trainer(small_config(), TensorSource(small_rows), tmp_path).fit(until_step=3)
    with pytest.raises(ValueError, match=r"differs in \['lr'\]"):
        Trainer(small_config(lr=1e-3), TensorSource(small_rows), tmp_path)
    with pytest.raises(FileExistsError, match="resume=True"):
        Trainer(small_config(), TensorSource(small_rows), tmp_path, resume=False)


def test_saved_sae_runs_on_raw_activations(small_rows, tmp_path):
    raw = small_rows * 40.0 + 5.0  # far from E||x||^2 = d
    source = TensorSource(raw)
    trainer = Trainer(small_config(steps=30), source, tmp_path)
    d = raw.shape[1]
    sample = source.sample(4096, seed=0)
    assert (sample * trainer.scale).pow(2).sum(-1).mean() == pytest.approx(d, rel=1e-4)
    trainer.fit()
    val = next(iter(source.loader("val", 256, seed=0)))

    # Training view: normalised rows, input_scale 1.
    trainer.sae.input_scale.fill_(1.0)
    with torch.no_grad():
        normalised = val * trainer.scale
        train_fvu = fvu(normalised, trainer.sae(normalised).x_hat)
    saved = load_sae(tmp_path / "sae").eval()
    assert saved.input_scale.item() == pytest.approx(trainer.scale)
    with torch.no_grad():
        out = saved(val)
    assert fvu(val, out.x_hat).item() == pytest.approx(train_fvu.item(), rel=1e-4)
    assert torch.allclose(out.x_hat, trainer.sae(normalised).x_hat / trainer.scale, atol=1e-3)


def _count_aux_calls(monkeypatch):
    calls = []

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    real = losses_module.aux_k_loss
    monkeypatch.setattr(losses_module, "aux_k_loss", counting)
    return calls


def test_aux_k_revives_dead_latents(small_rows, tmp_path, monkeypatch):
    def run(aux_coefficient, run_dir):
        config = small_config(
            architecture="topk",
            k_per_token=2,
            steps=200,
            log_every=20,
            val_every=None,
            dead_tokens=256,
            aux_coefficient=aux_coefficient,
        )
        trainer = Trainer(config, TensorSource(small_rows), run_dir)
        with torch.no_grad():  # half the latents barely respond: they never win a top-k
            trainer.sae.encoder.weight[32:] *= 0.01
        trainer.fit()
        return [r["dead_fraction"] for r in read_log(run_dir) if "dead_fraction" in r]

    calls = _count_aux_calls(monkeypatch)
    with_aux = run(1 / 32, tmp_path / "aux")
    assert calls, "AuxK never ran although latents were dead"
    without = run(0.0, tmp_path / "none")
    assert with_aux[0] >= 0.4 and min(without) >= 0.45  # without AuxK they stay dead
    # 64 latents for 48 true atoms: ~a quarter have nothing to learn and may stay dead.
    assert with_aux[-1] < with_aux[0] - 0.12
    log = read_log(tmp_path / "aux")
    assert any(r.get("aux_loss", 0) > 0 for r in log)


def test_aux_k_skipped_when_nothing_is_dead(small_rows, tmp_path, monkeypatch):
    calls = _count_aux_calls(monkeypatch)
    config = small_config(steps=20, val_every=None, dead_tokens=10_000_000)
    train(config, TensorSource(small_rows), tmp_path)
    assert not calls  # no latent can be dead before 10M tokens: AuxK never runs
    assert all(r["aux_loss"] == 0.0 for r in read_log(tmp_path) if "aux_loss" in r)


@pytest.mark.parametrize("normalization", ["l2", "identity"])
def test_decoder_rows_stay_unit_norm(normalization, small_rows, tmp_path):
    config = small_config(
        steps=20, val_every=None, extra={"dictionary_params": {"normalization": normalization}}
    )
    trainer = Trainer(config, TensorSource(small_rows), tmp_path)
    start = trainer.sae.dictionary.weight.detach().clone()
    sae = trainer.fit()
    weight = sae.dictionary.weight.detach()
    assert not torch.allclose(weight, start)
    torch.testing.assert_close(weight.norm(dim=-1), torch.ones(64), rtol=0, atol=1e-5)


def test_trains_from_a_zarr_store(tmp_path):
    from sae_hooks.store import StoreWriter

    rows = sparse_data(n=3000, d=16, n_atoms=48, active=2, seed=2)[0]
    point = "resid_post.0"
    with StoreWriter(tmp_path / "store", points=[point], d_model=16, chunk_rows=256) as writer:
        for start in range(0, len(rows), 500):
            part = rows[start : start + 500]
            n = len(part)
            writer.append(
                SimpleNamespace(
                    acts={point: part},
                    token_ids=torch.zeros(n, dtype=torch.int64),
                    doc_index=torch.arange(start, start + n) // 50,
                    position=torch.arange(n) % 50,
                )
            )
    config = small_config(point=point, steps=12, log_every=4, val_every=6, val_batches=2)
    sae = train(config, str(tmp_path / "store"), tmp_path / "run")
    assert sae.input_scale.item() != 1.0  # scale from the store's mean_sq_norm stats
    log = read_log(tmp_path / "run")
    train_keys = {
        "step", "tokens", "loss", "mse", "fvu", "l0", "dead_fraction",
        "dense_fraction", "aux_loss", "lr", "tokens_per_s",
    }  # fmt: skip
    assert [r["step"] for r in log if "loss" in r] == [4, 8, 12]
    assert all(set(r) == train_keys for r in log if "loss" in r)
    assert [r["step"] for r in log if "val/fvu" in r] == [6, 12]
    assert load_sae(tmp_path / "run" / "sae").nb_concepts == 64
    state = (tmp_path / "run" / "checkpoint" / "state.json").read_text()
    assert '"epoch"' in state  # the ActivationLoader's position is checkpointed


def test_trains_from_a_live_model_through_a_shuffle_buffer(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    from sae_hooks.train import ModelSource

    torch.manual_seed(0)
    model = GPT2LMHeadModel(
        GPT2Config(vocab_size=128, n_positions=32, n_embd=32, n_layer=2, n_head=2)
    )
    model.eval()
    ids = torch.randint(0, 128, (40, 32), generator=torch.Generator().manual_seed(0))
    data = [
        {"input_ids": ids[i : i + 4], "attention_mask": torch.ones(4, 32), "doc_offset": i}
        for i in range(0, 40, 4)
    ]
    source = ModelSource(model, "resid_post.0", data, buffer_rows=256, val_every_doc=10)
    assert source.d_model == 32
    config = small_config(steps=8, batch_size=64, log_every=4, val_every=None)
    sae = train(config, source, tmp_path)
    log = read_log(tmp_path)
    assert [r["step"] for r in log if "loss" in r] == [4, 8]
    assert log[-1]["val/l0"] > 0  # held-out documents (index % 10 == 0) validate
    assert sae.input_size == 32


def test_validation_counts_as_eval_does_on_the_same_rows(small_rows, tmp_path):
    """val/fvu and val/l0 in log.jsonl are eval.json's fvu and l0 on the same held-out rows:
    one mean over all rows (not per batch), codes of the eval-mode (running-threshold) SAE."""
    from sae_hooks.metrics import FiringStats, SumOfSquares

    config = small_config(val_every=None, val_batches=3, batch_size=48)
    trainer = Trainer(config, TensorSource(small_rows), tmp_path)
    sae = trainer.fit()  # raw-scale SAE (input_scale = s), in eval mode
    val = read_log(tmp_path)[-1]
    squares, firing = SumOfSquares(), FiringStats(sae.nb_concepts)
    per_batch_denominator = 0.0
    loader = trainer.source.loader("val", config.batch_size, seed=config.seed)
    with torch.no_grad():
        for _, x in zip(range(config.val_batches), loader):
            out = sae(x)  # what evaluate_reconstruction does with each batch of rows
            squares.update(x, out.x_hat)
            firing.update(out.z)
            per_batch_denominator += float((x - x.mean(0)).pow(2).sum())
    assert firing.rows == 3 * 48
    assert val["val/fvu"] == pytest.approx(squares.fvu, rel=1e-4)
    assert val["val/l0"] == pytest.approx(firing.l0, rel=1e-6)
    assert val["val/dead_fraction"] == pytest.approx(firing.dead_fraction)
    # Centring each batch on its own mean (the old val/fvu) gives another number here.
    per_batch_fvu = squares.state[1].item() / per_batch_denominator
    assert val["val/fvu"] != pytest.approx(per_batch_fvu, rel=1e-4)


def test_train_fvu_is_one_mean_over_the_window(small_rows, tmp_path, monkeypatch):
    """The log's train fvu divides by the spread around the mean of all the window's rows."""
    from sae_hooks.train.window import LogWindow

    seen = []
    real_add = LogWindow.add

    def add(self, losses, x, x_hat, fires, rows, err=None):
        seen.append((x.clone(), x_hat.clone()))
        real_add(self, losses, x, x_hat, fires, rows, err)

    monkeypatch.setattr(LogWindow, "add", add)
    train(small_config(steps=6, log_every=3, val_every=None), TensorSource(small_rows), tmp_path)
    first = next(r for r in read_log(tmp_path) if "fvu" in r)
    x = torch.cat([a for a, _ in seen[:3]])
    x_hat = torch.cat([b for _, b in seen[:3]])
    expected = (x - x_hat).double().pow(2).sum() / (x - x.mean(0)).double().pow(2).sum()
    assert first["fvu"] == pytest.approx(expected.item(), rel=1e-5)


def test_model_source_holds_out_documents_by_their_index_in_the_source():
    """An InputBatch's doc_offset decides which documents are held out, not the batch's
    own numbering: with val_every_doc=3 and batches of 4, documents 0, 3 and 6 validate."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from sae_hooks.data import InputBatch
    from sae_hooks.train import ModelSource

    torch.manual_seed(0)
    model = GPT2LMHeadModel(
        GPT2Config(vocab_size=64, n_positions=8, n_embd=16, n_layer=2, n_head=2)
    ).eval()
    ids = torch.arange(8 * 8).reshape(8, 8) % 64
    data = [
        InputBatch({"input_ids": ids[i : i + 4], "attention_mask": torch.ones(4, 8)}, i, i // 4)
        for i in (0, 4)
    ]
    source = ModelSource(model, "resid_post.0", data, val_every_doc=3)
    val = torch.cat([v for _, v in source._captures(0)])
    with torch.no_grad():
        hidden = model(input_ids=ids, output_hidden_states=True).hidden_states[1]
    torch.testing.assert_close(val, hidden[[0, 3, 6]].reshape(-1, 16))


@pytest.mark.parametrize("arch", ["topk", "batchtopk", "jumprelu", "relu", "matryoshka_batchtopk"])
def test_a_bfloat16_sae_trains_on_the_cpu_as_its_float32_twin(arch, data, tmp_path):
    """dtype="bfloat16" computes in bf16 through autocast on the CPU too (the fp32 rows
    met bf16 weights in a bare matmul before), AuxK and the sparse paths' CSR products
    included (no bf16 CSR kernel on the CPU: those sum in fp32), and lands where fp32 does."""
    x, _ = data
    found = {}
    for dtype in ("float32", "bfloat16"):
        config = TrainConfig(
            architecture=arch,
            nb_concepts=256,
            k_per_token=8 if "topk" in arch else None,
            target_l0=8 if arch in ("jumprelu", "relu") else None,
            batch_size=256,
            steps=100,
            dtype=dtype,
            dead_tokens=512,  # latents go dead within the run: AuxK runs
            progress=False,
            val_every=0,
            checkpoint_every=0,
            log_every=25,
        )
        sae = train(config, x[:8192], tmp_path / dtype)
        assert {p.dtype for p in sae.parameters()} == {getattr(torch, dtype)}
        log = read_log(tmp_path / dtype)
        found[dtype] = [r["fvu"] for r in log if "fvu" in r][-1]
        if "topk" in arch:
            assert max(r.get("aux_loss", 0.0) for r in log) > 0
    assert found["bfloat16"] == pytest.approx(found["float32"], abs=0.03)


def test_float16_parameters_are_refused_with_the_reason():
    with pytest.raises(ValueError, match=r"float16 cannot train.*bfloat16"):
        TrainConfig(dtype="float16")
