"""train_many: a grid of SAEs from one pass over a store equals each SAE trained alone."""

from __future__ import annotations

import dataclasses
import json
import shutil
from types import SimpleNamespace

import pytest
import torch

from sae_hooks.store import StoreWriter, open_store
from sae_hooks.train import Sweep, TrainConfig, read_log, read_sweep, train, train_many
from sae_hooks.train import many as many_module

POINTS = ["resid_post.0", "resid_post.1"]
D = 16


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def write_store(path, n=2400, seed=0):
    g = torch.Generator().manual_seed(seed)
    atoms = torch.nn.functional.normalize(torch.randn(48, D, generator=g), dim=-1)
    with StoreWriter(path, points=POINTS, d_model=D, chunk_rows=128) as writer:
        for start in range(0, n, 400):
            codes = torch.rand(400, 48, generator=g) * (torch.rand(400, 48, generator=g) < 0.05)
            rows = 3 * codes @ atoms + 1.0
            writer.append(
                SimpleNamespace(
                    acts={POINTS[0]: rows, POINTS[1]: rows.flip(-1) * 2 + 0.1 * rows},
                    token_ids=torch.zeros(400, dtype=torch.int64),
                    doc_index=torch.arange(start, start + 400) // 40,
                    position=torch.arange(400) % 40,
                )
            )
    return str(path)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return write_store(tmp_path_factory.mktemp("many") / "store")


BASE = TrainConfig(
    batch_size=64,
    steps=10,
    log_every=3,
    val_every=5,
    val_batches=2,
    checkpoint_every=4,
    init_rows=256,
    progress=False,
)


def grid() -> Sweep:
    return Sweep(
        BASE,
        {
            "point": POINTS,
            "architecture": ["batchtopk", "jumprelu"],
            "nb_concepts": [32, 64],
            "k_per_token": [2, 3],
            "seed": [0, 1],
        },
    )


def same_sae(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for name in sa:
        torch.testing.assert_close(sa[name], sb[name], rtol=0, atol=1e-6, msg=name)


def same_log(a_dir, b_dir):
    def clean(records):
        return [{k: v for k, v in r.items() if k != "tokens_per_s"} for r in records]

    assert clean(read_log(a_dir)) == clean(read_log(b_dir))


def test_sweep_expands_axes_into_named_configs():
    sweep = grid()
    configs, names = sweep.configs(), sweep.names()
    # 2 points x 2 architectures x 2 widths x 2 L0s x 2 seeds: every combination trains
    assert len(configs) == len(sweep) == 32 and len(set(names)) == 32
    assert names[0] == "resid_post.0-batchtopk-n32-k2-s0"
    assert "resid_post.1-jumprelu-n64-l03-s1" in names
    jump = configs[names.index("resid_post.1-jumprelu-n64-l03-s1")]
    assert jump.k_per_token is None and jump.target_l0 == 3.0 and jump.seed == 1
    batch = configs[names.index("resid_post.1-batchtopk-n64-k3-s1")]
    assert batch.k_per_token == 3 and batch.target_l0 is None
    assert {c.data_seed for c in configs} == {0}  # seeds vary the init, not the batches
    lr = Sweep(BASE, {"lr": [1e-3, 3e-3]}).names()
    assert lr == ["batchtopk-lr0.001-s0", "batchtopk-lr0.003-s0"]


def test_the_readme_sweep_trains_its_16_combinations_at_one_sparsity_each():
    """architecture x width x k_per_token x seed = 16 SAEs; JumpReLU's target L0 is the
    k of its BatchTopK twin (the sweep of README.md, issue 31 item 4)."""
    base = TrainConfig(point="resid_post.3", steps=2_000)
    axes = {
        "architecture": ["batchtopk", "jumprelu"],
        "nb_concepts": [3072, 6144],
        "k_per_token": [16, 32],
        "seed": [0, 1],
    }
    sweep = Sweep(base, axes)
    plan = sweep.plan()
    assert len(sweep) == len(plan) == 16 and len({name for name, _ in plan}) == 16
    l0 = {(c.architecture, c.k_per_token or c.target_l0) for _, c in plan}
    assert l0 == {("batchtopk", 16), ("batchtopk", 32), ("jumprelu", 16.0), ("jumprelu", 32.0)}
    assert all(c.target_l0 is not None for _, c in plan if c.architecture == "jumprelu")
    text = sweep.format_plan()
    assert text.splitlines()[0] == "sweep of 16 SAEs" and "steps=2000" in text.splitlines()[1]
    assert "resid_post.3-jumprelu-n6144-l016-s1: architecture='jumprelu'" in text
    assert "target_l0=16.0" in text and "k_per_token=32" in text
    # a target_l0 axis is the same sparsity, the other way round; the base's too
    by_l0 = Sweep(
        base,
        {
            "architecture": ["batchtopk", "jumprelu"],
            "nb_concepts": [3072, 6144],
            "target_l0": [16.0, 32.0],
            "seed": [0, 1],
        },
    )
    assert [c.k_per_token or c.target_l0 for c in by_l0.configs()] == [
        c.k_per_token or c.target_l0 for _, c in plan
    ]
    carried = Sweep(dataclasses.replace(base, k_per_token=8), {"architecture": ["topk", "relu"]})
    assert [(c.k_per_token, c.target_l0) for c in carried.configs()] == [(8, None), (None, 8.0)]


@pytest.mark.parametrize(
    ("axes", "message"),
    [
        ({"architecture": ["topk", "jumprelu"], "target_l0": [2.5]}, "whole number of codes"),
        ({"k_per_token": [2], "target_l0": [3.0]}, "two sparsities"),
        ({"architecture": ["topk", "batchtopk"], "top_k": [64]}, "counts codes differently"),
        ({"architecture": ["jumprelu"], "top_k": [64]}, "takes no top_k"),
        ({"seed": [0, 0]}, r"sweep points \{'seed': 0\} and \{'seed': 0\} give the same SAE"),
    ],
)
def test_sweep_refuses_a_grid_it_cannot_train_as_described(axes, message):
    with pytest.raises(ValueError, match=message):
        Sweep(BASE, axes).configs()


def test_train_many_prints_the_plan_before_training(store, tmp_path, capsys):
    base = dataclasses.replace(BASE, point=POINTS[0], steps=2, progress=True)
    sweep = Sweep(base, {"nb_concepts": [32, 64]})
    train_many(sweep, store, tmp_path / "run", until_step=0)
    out = capsys.readouterr().out
    assert out.startswith(sweep.format_plan()) and "  resid_post.0-batchtopk-n64-s0: " in out


def test_train_many_equals_each_sae_alone(store, tmp_path):
    """Every SAE of a mixed grid (2 points x 2 architectures x 2 widths) trained together
    equals the same config trained alone by train(): weights and logs."""
    sweep = Sweep(
        BASE,
        {
            "point": POINTS,
            "architecture": ["batchtopk", "jumprelu", "topk"],
            "nb_concepts": [32],
            "k_per_token": [2],
            "seed": [0, 1],
        },
    )
    configs, names = sweep.configs(), sweep.names()
    assert len(configs) == 12  # 2 points x 3 architectures x 2 seeds
    saes = train_many(sweep, store, tmp_path / "sweep")
    assert list(saes) == names
    for cfg, name in zip(configs, names):
        alone = train(cfg, store, tmp_path / "alone" / name)
        same_sae(saes[name], alone)
        same_log(tmp_path / "sweep" / name, tmp_path / "alone" / name)
        sub = tmp_path / "sweep" / name
        assert {p.name for p in sub.iterdir()} >= {"config.json", "log.jsonl", "checkpoint", "sae"}
    summary = read_sweep(tmp_path / "sweep")
    assert [s["name"] for s in summary] == names
    assert all(s["step"] == 10 and "val/fvu" in s["metrics"] for s in summary)


def test_one_store_read_per_point_per_step(store, tmp_path, monkeypatch):
    """8 SAEs on 2 points: 2 batch reads per step, not 8."""
    reads = []
    original = many_module._Lockstep._step

    def counting(self, movers, bar):
        reads.append(len({id(t.loader) for t in movers}))
        return original(self, movers, bar)

    monkeypatch.setattr(many_module._Lockstep, "_step", counting)
    sweep = Sweep(
        dataclasses.replace(BASE, steps=4),
        {"point": POINTS, "nb_concepts": [32, 64], "seed": [0, 1]},
    )
    train_many(sweep, store, tmp_path / "run")
    assert reads == [2, 2, 2, 2]


def test_resume_after_a_kill_with_saes_at_different_steps(store, tmp_path):
    """Stopped at step 6, one SAE's checkpoint lost (back at 0), one at 4: all resume
    from their own checkpoints and end equal to an uninterrupted sweep."""
    sweep = Sweep(BASE, {"point": [POINTS[0]], "nb_concepts": [32, 64], "seed": [0, 1]})
    names = sweep.names()
    straight = train_many(sweep, store, tmp_path / "straight")
    train_many(sweep, store, tmp_path / "run", until_step=4)
    shutil.copytree(tmp_path / "run" / names[1] / "checkpoint", tmp_path / "at4")
    train_many(sweep, store, tmp_path / "run", until_step=6)
    shutil.rmtree(tmp_path / "run" / names[0] / "checkpoint")
    shutil.rmtree(tmp_path / "run" / names[1] / "checkpoint")
    shutil.copytree(tmp_path / "at4", tmp_path / "run" / names[1] / "checkpoint")
    steps = [
        json.loads((tmp_path / "run" / n / "checkpoint" / "state.json").read_text())["step"]
        for n in names[1:]
    ]
    assert steps == [4, 6, 6]
    resumed = train_many(sweep, store, tmp_path / "run")
    for name in names:
        same_sae(resumed[name], straight[name])
        same_log(tmp_path / "run" / name, tmp_path / "straight" / name)


def test_refuses_configs_that_cannot_share_batches(store, tmp_path):
    a = dataclasses.replace(BASE, point=POINTS[0])
    with pytest.raises(ValueError, match=r"disagree on batch_size \(\[32, 64\]\)"):
        train_many([a, dataclasses.replace(a, batch_size=32)], store, tmp_path / "r")
    with pytest.raises(ValueError, match="disagree on data_seed"):
        train_many([a, dataclasses.replace(a, seed=1)], store, tmp_path / "r")
    with pytest.raises(ValueError, match="repeated"):
        train_many([a, a], store, tmp_path / "r", names=["x", "x"])
    with pytest.raises(ValueError, match="share the names"):
        train_many([a, dataclasses.replace(a, data_seed=0, seed=0)], store, tmp_path / "r")
    with pytest.raises(ValueError, match="plain directory name"):
        train_many([a], store, tmp_path / "r", names=["../up"])
    # different points may differ in both
    b = dataclasses.replace(BASE, point=POINTS[1], batch_size=32, seed=3, steps=2)
    out = train_many([dataclasses.replace(a, steps=2), b], open_store(store), tmp_path / "ok")
    assert len(out) == 2


def test_live_capture_runs_one_forward_for_every_point(tmp_path):
    """2 points x 2 SAEs from a live model: each SAE equals train() on a ModelSource of its
    point, and the sweep runs (within one start-up forward) as many forwards as one SAE."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from sae_hooks.train import ModelSource, MultiPointSource

    torch.manual_seed(0)
    model = GPT2LMHeadModel(
        GPT2Config(vocab_size=128, n_positions=32, n_embd=32, n_layer=3, n_head=2)
    )
    model.eval()
    ids = torch.randint(0, 128, (40, 32), generator=torch.Generator().manual_seed(0))
    data = [
        {"input_ids": ids[i : i + 4], "attention_mask": torch.ones(4, 32), "doc_offset": i}
        for i in range(0, 40, 4)
    ]
    options = dict(buffer_rows=256, val_every_doc=10)
    points = ["resid_post.0", "resid_post.1"]
    base = dataclasses.replace(BASE, steps=6, batch_size=64, checkpoint_every=None)
    sweep = Sweep(base, {"point": points, "nb_concepts": [32, 64]})

    source = MultiPointSource(model, points, data, **options)
    saes = train_many(sweep, source, tmp_path / "many")
    one = MultiPointSource(model, points, data, **options)
    solo = Sweep(base, {"point": points[:1], "nb_concepts": [32]})
    train_many(solo, one, tmp_path / "one")
    assert source.forwards <= one.forwards + 1
    for cfg, name in zip(sweep.configs(), sweep.names()):
        alone = train(cfg, ModelSource(model, cfg.point, data, **options), tmp_path / name)
        same_sae(saes[name], alone)
    with pytest.raises(ValueError, match="is not captured"):
        source.for_point("resid_post.2")
