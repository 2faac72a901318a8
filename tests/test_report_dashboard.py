"""The HTML dashboard: correct contexts, escaped text, no network, renders in Chromium."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess

import numpy as np
import pytest
import torch
from torch import nn

from sae_hooks.eval.ablation import AblationResult
from sae_hooks.report import build_dashboard, build_report, make_dashboard

VOCAB = 24
EVIL = 3  # the token whose text is a script tag


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


def ablation_result():
    return AblationResult(
        "resid_post.1", 2, [5, 11], [0.9, 0.4], 0.1, 0.2, -1.0, 0.15, [0.05, 0.07], [0.2, 0.21], 0
    )


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    path = tmp_path_factory.mktemp("dash") / "index.html"
    unembed = torch.eye(VOCAB) + 0.01 * torch.arange(VOCAB)  # latent i promotes token i
    record = {"concept": "<b>cats</b>", "target": "logit of ' cat'", **ablation_result().to_dict()}
    build_dashboard(
        OneHotSAE(),
        token_source(),
        path,
        tokenizer=NAMES,
        unembed=unembed,
        ablations=[record],
        progress=False,
    )
    return path


def load_js(path, name):
    """The JSON a data file assigns (SAE.name = {...};)."""
    text = path.read_text()
    return json.loads(text.split(f"SAE.{name}=", 1)[1].rstrip().rstrip(";"))


def chunk_of(folder, latent):
    text = (folder / "data" / "latents" / f"{latent // 64}.js").read_text()
    return json.loads(text.split(",", 1)[1].rstrip().rstrip(";")[:-1])[str(latent)]


def test_every_latent_is_indexed_and_has_data(page):
    index = load_js(page.parent / "data" / "index.js", "index")
    stats = make_dashboard(OneHotSAE(), token_source(), progress=False).stats
    assert index["n"] == VOCAB and index["fires"] == stats.fire_count.tolist()
    assert index["top"][7] == [7]  # latent i's top token is token i
    for i in range(VOCAB):
        data = chunk_of(page.parent, i)
        assert {ex["t"][ex["c"]] for ex in data["ex"]} == {i}
        assert data["up"][0][0] == i and sum(data["hist"]) == int(stats.fire_count[i])


def test_examples_are_top_then_quantile_bins_without_repeats():
    src = token_source()
    dash = make_dashboard(OneHotSAE(), src, n_examples=5, progress=False)
    tokens, docs = src["token_ids"].numpy(), src["doc_index"].numpy()
    for i in range(VOCAB):
        examples = dash.examples[i]
        top = [ex for ex in examples if ex.group == "top"]
        assert len(top) == 5 and len(examples) > 5  # quantile-bin examples follow
        rows = [r for ex in examples for r in ex.rows.tolist()]
        assert len(rows) == len(set(rows))  # no context shown twice
        for ex in examples:
            assert tokens[ex.row] == i and ex.token_ids[ex.center] == i
            assert (docs[ex.rows] == docs[ex.row]).all()  # never crosses a document
            np.testing.assert_allclose(ex.acts > 0, ex.token_ids == i)
        best = src["acts"][:, i].max().item()
        assert top[0].value == pytest.approx(best)
        bins = [ex for ex in examples if ex.group != "top"]
        values = [ex.value for ex in bins]
        assert values == sorted(values, reverse=True)  # highest bin first, sorted in each
        labels = list(dict.fromkeys(ex.group for ex in bins))  # each bin's examples together
        assert [ex.group for ex in bins] == sorted((ex.group for ex in bins), key=labels.index)


def test_html_is_escaped_and_offline(page):
    folder = page.parent
    files = [p for p in folder.rglob("*") if p.is_file() and p.suffix in (".html", ".js")]
    for f in files:
        text = f.read_text()
        assert "<script>alert" not in text and "<b>cats" not in text, f
        assert not re.search(r"https?://(?!www\.w3\.org/2000/svg)", text), f
    assert "\\u003cscript>alert" in (folder / "data" / "tokens.js").read_text()
    ablation = (folder / "ablation.html").read_text()
    assert "&lt;b&gt;cats&lt;/b&gt;" in ablation
    for html_page in folder.glob("*.html"):
        srcs = re.findall(r'(?:src|href)="([^"]+)"', html_page.read_text())
        assert all(not s.startswith(("http", "//")) for s in srcs), srcs


def test_ablation_page_names_concept_and_target(page):
    text = (page.parent / "ablation.html").read_text()
    section = text.split('id="ablation-1"')[1].split("</section>")[0]
    assert "&lt;b&gt;cats&lt;/b&gt;" in section and "logit of &#39; cat&#39;" in section
    assert 'href="latent.html?id=5"' in section and 'href="latent.html?id=11"' in section
    assert "-1.1000" in section  # effect on positives: concept_positive - clean_positive


def vision_source(n_img=6, grid=4):
    per = 1 + grid * grid  # CLS + 16 patches per image
    pos = torch.arange(n_img * per) % per
    latent = torch.where(pos == 0, 0, 1 + (pos - 1) % 3)  # patch latents 1..3, CLS latent 0
    acts = nn.functional.one_hot(latent, VOCAB).float() * (
        1 + torch.arange(n_img * per)[:, None] / 100
    )
    return {
        "acts": acts,
        "token_ids": torch.full_like(pos, -1),
        "doc_index": torch.arange(n_img * per) // per,
        "position": pos,
    }


@pytest.fixture(scope="module")
def vision_page(tmp_path_factory):
    folder = tmp_path_factory.mktemp("vit")
    images = torch.rand(6, 3, 32, 32)
    return build_dashboard(OneHotSAE(), vision_source(), folder, images=images, progress=False)


def test_vision_store_shows_patch_grids_over_thumbnails(vision_page):
    folder = vision_page.parent
    assert sorted(p.name for p in (folder / "thumbs").iterdir()) == [f"{i}.png" for i in range(6)]
    data = chunk_of(folder, 2)
    top = [ex for ex in data["ex"] if ex["g"] == "top"]
    assert [ex["d"] for ex in top] == [5, 4, 3, 2, 1, 0]  # best (later rows) first, one per image
    assert all(ex["img"] == f"thumbs/{ex['d']}.png" for ex in top)
    assert all(ex["p"][ex["c"]] in (2, 5, 8, 11, 14) for ex in top)  # patches of latent 2
    dash = make_dashboard(OneHotSAE(), vision_source(), progress=False)
    assert dash.vision and dash.tokens is None


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
    assert 'alt="training curves" src="training.png"' in text
    assert f"<h1>SAE report: {run.name}</h1>" in text
    assert "<dt>architecture</dt><dd>batchtopk</dd>" in text
    assert "<dt>k per token</dt><dd>2</dd>" in text  # config's k_per_token, not top_k 128
    index = load_js(run / "report" / "data" / "index.js", "index")
    assert index["n"] == 48 and sum(len(t) > 0 for t in index["top"]) <= 5


def test_k_per_token_is_not_the_batch_budget():
    from sae_hooks.report.summary import k_per_token

    assert k_per_token({"architecture": "batchtopk", "top_k": 32768, "batch_size": 1024}) == (
        32.0,
        "batch budget 32,768 / batch 1,024",
    )
    assert k_per_token({"architecture": "topk", "top_k": 16}) == (16.0, "")
    assert k_per_token({"architecture": "jumprelu"}) == (None, "")


def test_pipeline_run_header_names_run_eval_and_warnings(run_dir, tmp_path):
    import shutil

    run, _ = run_dir
    top = tmp_path / "minilm-l3"
    shutil.copytree(run, top / "train", ignore=shutil.ignore_patterns("report"))
    (top / "eval.json").write_text(
        json.dumps(
            {
                "point": "p",
                "fvu": 0.1234,
                "l0": 31.4,
                "dead_fraction": 0.02,
                "downstream": {"loss_recovered": 0.91},
            }
        )
    )
    with (top / "train" / "log.jsonl").open("a") as f:
        f.write(json.dumps({"step": 20, "warning": "final L0 40 is 25% off target 32"}) + "\n")
    index = build_report(top / "train", n_latents=0, progress=False)
    assert index == top / "report" / "index.html"
    text = index.read_text()
    assert "<h1>SAE report: minilm-l3</h1>" in text
    assert "<td>FVU</td><td>0.1234</td>" in text and "<td>loss recovered</td><td>0.91</td>" in text
    assert "warning: final L0 40 is 25% off target 32" in text


def test_cli_subcommand(run_dir, tmp_path):
    from sae_hooks.cli import build_parser, main

    run, _ = run_dir
    parser = build_parser()
    argv = [
        "report",
        str(run),
        "--out",
        str(tmp_path / "r"),
        "--latents",
        "3,7",
        "--n-latents",
        "0",
    ]
    assert parser.parse_args(argv).latents == [3, 7]
    assert main([*argv, "--quiet"]) == 0
    text = (tmp_path / "r" / "index.html").read_text()
    assert "No activations given" in text
    assert "cos" in chunk_of(tmp_path / "r", 3) and "ex" not in chunk_of(tmp_path / "r", 3)
    with pytest.raises(SystemExit):
        parser.parse_args(["report", str(run), "--latents", "a,b"])


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
NEED_CHROMIUM = "install Debian's chromium package: apt-get install -y chromium"


def chromium(tmp_path, *args):
    """Run headless Chromium; console messages and uncaught errors go to stderr."""
    if CHROMIUM is None:
        if os.environ.get("CI"):
            pytest.fail(f"no Chromium on this CI machine: {NEED_CHROMIUM}")
        pytest.skip(f"no Chromium: {NEED_CHROMIUM}")
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
        "--virtual-time-budget=5000",  # lets the lazily loaded data scripts run
        *args,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=90)


def dom(tmp_path, url):
    """The rendered DOM of `url`, asserting the page ran to its end without a JS error."""
    done = chromium(tmp_path, "--dump-dom", url)
    assert done.returncode == 0, done.stderr[-2000:]
    console = [line for line in done.stderr.splitlines() if "CONSOLE" in line]
    assert not [line for line in console if "Uncaught" in line or "rror" in line], console
    assert 'data-ready="1"' in done.stdout, done.stdout[-2000:]
    return done.stdout


def test_browser_index_then_a_latent_page_by_its_link(page, tmp_path):
    index = dom(tmp_path, page.as_uri())
    assert re.search(r'id="shown-count"[^>]*>24 shown of 24 matching', index)
    href = re.search(r'<a href="(latent\.html\?id=5)">5</a>', index).group(1)
    latent = dom(tmp_path, page.parent.as_uri() + "/" + href)
    assert '<h1 id="title">Latent 5' in latent and "ablated: &lt;b&gt;cats&lt;/b&gt;" in latent
    assert latent.count('<div class="ctx"') >= 8
    assert "Top activations" in latent and "Activation quantile" in latent
    assert re.search(r'<span class="tok up" title="\+[^"]+">w5</span>', latent)
    assert "nearest by decoder cosine" in latent and "<svg" in latent
    bad = dom(tmp_path, page.parent.as_uri() + "/latent.html?id=3")
    assert "&lt;script&gt;alert('x')&lt;/script&gt;" in bad  # shown as text, not run


def test_browser_vit_latent_page_loads_its_images(vision_page, tmp_path):
    latent = dom(tmp_path, vision_page.parent.as_uri() + "/latent.html?id=2")
    assert 'data-images="6/0"' in latent  # every thumbnail loaded, none failed
    assert latent.count('<figure class="patch">') == 6  # one per image: never twice
    assert "image 5 · max" in latent and 'stroke="#d93025"' in latent


def test_browser_ablation_page(page, tmp_path):
    text = dom(tmp_path, page.parent.as_uri() + "/ablation.html")
    assert "Experiment 1: concept" in text and "&lt;b&gt;cats&lt;/b&gt;" in text
    shot = tmp_path / "shot.png"
    done = chromium(tmp_path, f"--screenshot={shot}", "--window-size=1000,900", page.as_uri())
    assert done.returncode == 0 and shot.stat().st_size > 20_000


def test_tokens_keep_their_spaces(tokenizer, texts):
    from sae_hooks.report.tokens import TokenText

    ids = tokenizer(texts[0][:200])["input_ids"]
    shown = TokenText(tokenizer)
    assert "".join(shown[i] for i in ids) == tokenizer.decode(ids)


def test_gpt2_byte_level_tokens_read_as_text():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from sae_hooks.report.tokens import TokenText

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    bpe.train_from_iterator(
        ["hello world ’quote’"] * 5, trainers.BpeTrainer(vocab_size=300, initial_alphabet=alphabet)
    )
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe)
    shown = TokenText(tok)
    assert shown[tok.convert_tokens_to_ids("Ġworld")] == " world"  # 'Ġ' is the leading space
    assert shown[tok.convert_tokens_to_ids("â")] == "\\xe2"  # half a character: its byte
