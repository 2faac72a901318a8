"""The HTML dashboard: correct contexts, escaped text, no network, renders in Chromium."""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from sae_hooks.eval.ablation import AblationResult
from sae_hooks.report import add_report_parser, build_dashboard, build_report, make_dashboard

VOCAB = 24
EVIL = 3  # the token whose text is a script tag
SHOT = Path(__file__).resolve().parents[1] / "docs" / "img" / "dashboard.png"


class OneHotSAE(nn.Module):
    """Latent i fires exactly on token i (the rows are one-hot token embeddings)."""

    def __init__(self, vocab: int = VOCAB):
        super().__init__()
        self.input_size = self.nb_concepts = vocab
        self.weight = nn.Parameter(torch.eye(vocab))

    def encode(self, x):
        pre = x @ self.weight
        return pre, torch.relu(pre)

    def get_dictionary(self):
        return self.weight


def token_source(n_docs=40, doc_len=25, seed=0):
    g = torch.Generator().manual_seed(seed)
    n = n_docs * doc_len
    tokens = torch.randint(0, VOCAB, (n,), generator=g)
    scale = 1 + torch.rand(n, 1, generator=g)
    return {
        "acts": nn.functional.one_hot(tokens, VOCAB).float() * scale,
        "token_ids": tokens,
        "doc_index": torch.arange(n) // doc_len,
        "position": torch.arange(n) % doc_len,
    }


NAMES = {i: f"w{i}" for i in range(VOCAB)} | {EVIL: "<script>alert('x')</script>"}


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    path = tmp_path_factory.mktemp("dash") / "index.html"
    unembed = torch.eye(VOCAB) + 0.01 * torch.arange(VOCAB)  # latent i promotes token i
    ablation = AblationResult(
        "resid_post.1", 2, [5, 11], [0.9, 0.4], 0.1, 0.2, -1.0, 0.15, [0.05, 0.07], [0.2, 0.21], 0
    )
    build_dashboard(
        OneHotSAE(),
        token_source(),
        path,
        tokenizer=NAMES,
        unembed=unembed,
        ablations=[ablation],
        n_latents=6,
        latents=[1],
        progress=False,
    )
    return path


def test_expected_latents_have_cards(page):
    text = page.read_text()
    stats = make_dashboard(OneHotSAE(), token_source(), n_latents=6, progress=False).stats
    top6 = torch.argsort(stats.fire_count, descending=True, stable=True)[:6].tolist()
    cards = {int(i) for i in re.findall(r'<section class="card" id="latent-(\d+)"', text)}
    assert cards == set(top6) | {1, 5, 11}  # most frequent + requested + ablated
    rows = re.findall(r'<tr data-id="(\d+)"', text)
    assert sorted(map(int, rows)) == sorted(cards)


def test_top_contexts_contain_the_latents_token():
    src = token_source()
    dash = make_dashboard(OneHotSAE(), src, latents=range(VOCAB), n_examples=5, progress=False)
    tokens, docs = src["token_ids"].numpy(), src["doc_index"].numpy()
    for i in range(VOCAB):
        examples = dash.examples[i]
        assert len(examples) == 5
        for ex in examples:
            assert tokens[ex.row] == i and ex.token_ids[ex.center] == i
            assert (docs[ex.rows] == docs[ex.row]).all()  # never crosses a document
            np.testing.assert_allclose(ex.acts > 0, ex.token_ids == i)
        best = src["acts"][:, i].max().item()
        assert examples[0].value == pytest.approx(best)


def test_html_is_escaped_and_offline(page):
    text = page.read_text()
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in text
    assert "<script>alert" not in text
    assert text.count("<script") == 1  # the page's own inline script, nothing else
    assert not re.search(r"https?://", text)
    assert not re.search(r"<link\b|<script[^>]*\bsrc=|<img[^>]*src=\"(?!data:)", text)
    assert page.stat().st_size < 300_000


def test_logit_tokens_and_ablation_section(page):
    text = page.read_text()
    card = text.split('id="latent-5"')[1].split("</section>")[0]
    assert re.search(r'<b>promotes</b> <span class="up" title="[^"]+">w5</span>', card)
    assert "ablated in experiment 1" in card
    section = text.split('id="ablation-1"')[1].split("</section>")[0]
    assert 'href="#latent-5"' in section and 'href="#latent-11"' in section
    assert "-1.1000" in section  # effect on positives: concept_positive - clean_positive


def test_vision_store_shows_patch_grids_over_images():
    n_img, grid = 6, 4  # CLS + 16 patches per image
    per = 1 + grid * grid
    pos = torch.arange(n_img * per) % per
    latent = torch.where(pos == 0, 0, 1 + (pos - 1) % 3)  # patch latents 1..3, CLS latent 0
    acts = nn.functional.one_hot(latent, VOCAB).float() * (
        1 + torch.arange(n_img * per)[:, None] / 100
    )
    src = {
        "acts": acts,
        "token_ids": torch.full_like(pos, -1),
        "doc_index": torch.arange(n_img * per) // per,
        "position": pos,
    }
    images = torch.rand(n_img, 3, 32, 32)
    text = make_dashboard(OneHotSAE(), src, images=images, n_latents=4, progress=False).html()
    card = text.split('id="latent-2"')[1].split("</section>")[0]
    assert card.count('<image href="data:image/png;base64,') == 6  # one example per image
    assert card.count('stroke="#d93025"') == 6  # the top patch of each example
    order = [card.index(f"image {i} ·") for i in (5, 4, 3, 2, 1, 0)]  # best (later rows) first
    assert order == sorted(order)
    assert "patch 1:" in card  # patch index of position 2
    no_images = make_dashboard(OneHotSAE(), src, n_latents=4, progress=False).html()
    assert "<image" not in no_images and 'class="patch"' in no_images


def test_bad_arguments_are_clear_errors():
    with pytest.raises(ValueError, match="out of range: the SAE has 24 latents"):
        make_dashboard(OneHotSAE(), token_source(), latents=[99], progress=False)
    with pytest.raises(TypeError, match="cannot read activations from int"):
        make_dashboard(OneHotSAE(), 5, progress=False)
    with pytest.raises(ValueError, match=r"unembed must be \(d_model=24, vocab\)"):
        make_dashboard(OneHotSAE(), token_source(), unembed=torch.zeros(5, 7), progress=False)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    from sae_hooks.train import TrainConfig, train

    run = tmp_path_factory.mktemp("run")
    torch.manual_seed(0)
    src = token_source()
    cfg = TrainConfig(
        architecture="batchtopk",
        nb_concepts=48,
        k_per_token=2,
        batch_size=64,
        steps=20,
        log_every=5,
        val_every=10,
        checkpoint_every=0,
        init_rows=256,
        progress=False,
    )
    train(cfg, src["acts"] + 0.01 * torch.randn_like(src["acts"]), run)
    return run, src


def test_build_report_from_a_trained_run_and_a_store(run_dir, tmp_path):
    pytest.importorskip("matplotlib")
    from types import SimpleNamespace

    from sae_hooks.store import StoreWriter

    run, src = run_dir
    with StoreWriter(tmp_path / "store", points=["resid_post.0"], chunk_rows=256) as w:
        w.append(
            SimpleNamespace(
                acts={"resid_post.0": src["acts"]},
                **{k: src[k] for k in ("token_ids", "doc_index", "position")},
            )
        )
    index = build_report(
        run, store=tmp_path / "store", tokenizer=NAMES, n_latents=5, progress=False
    )
    assert index == run / "report" / "index.html"
    assert (run / "report" / "training.png").stat().st_size > 10_000
    text = index.read_text()
    assert 'alt="training curves" src="data:image/png;base64,' in text
    assert "architecture: <b>batchtopk</b>" in text
    assert len(re.findall(r'<section class="card"', text)) == 5


def test_cli_subcommand(run_dir, tmp_path):
    run, _ = run_dir
    parser = argparse.ArgumentParser(prog="sae-hooks")
    add_report_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(
        ["report", str(run), "--out", str(tmp_path / "r"), "--latents", "3,7", "--n-latents", "0"]
    )
    assert args.latents == [3, 7]
    assert args.func(args) == 0
    text = (tmp_path / "r" / "index.html").read_text()
    assert 'id="latent-3"' in text and 'id="latent-7"' in text
    assert "No activations given" in text
    with pytest.raises(SystemExit):
        parser.parse_args(["report", str(run), "--latents", "a,b"])


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def chromium(tmp_path, *args):
    cmd = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--enable-logging=stderr",
        "--v=0",
        *args,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=90)


@pytest.mark.skipif(
    CHROMIUM is None,
    reason="no Chromium: install Debian's chromium package: apt-get install -y chromium",
)
def test_renders_in_headless_chromium(page, tmp_path):
    done = chromium(tmp_path, "--dump-dom", page.as_uri())
    assert done.returncode == 0, done.stderr[-2000:]
    dom = done.stdout
    assert 'data-ready="1"' in dom  # the inline script ran to its end
    assert re.search(r'id="shown-count"[^>]*>9 of 9 latents<', dom)
    for i in (1, 5, 11):
        assert f'id="latent-{i}"' in dom
    console = [line for line in done.stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line]
    assert not [line for line in console if "Uncaught" in line or "Error" in line], console
    shot = tmp_path / "shot.png"
    done = chromium(
        tmp_path,
        f"--screenshot={shot}",
        "--window-size=1000,1300",
        "--hide-scrollbars",
        page.as_uri(),
    )
    assert done.returncode == 0 and shot.stat().st_size > 20_000


def test_tokens_keep_their_spaces(tokenizer, texts):
    from sae_hooks.report.tokens import TokenText

    ids = tokenizer(texts[0][:200])["input_ids"]
    shown = TokenText(tokenizer)
    assert "".join(shown[i] for i in ids) == tokenizer.decode(ids)
