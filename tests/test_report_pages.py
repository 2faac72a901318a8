"""What the dashboard's pages say: dense latents flagged, ablations named, the frontier drawn
readably (issue 34's dashboard items)."""

from __future__ import annotations

import json
import re

import pytest
import torch
from test_report_dashboard import VOCAB, OneHotSAE, ablation_result, dom, load_js, token_source

from sae_hooks.metrics import DENSE_FRACTION
from sae_hooks.report import build_dashboard
from sae_hooks.report.frontier import plot_frontier
from sae_hooks.report.summary import run_ablations
from sae_hooks.rundir import RunDir

DENSE = 0  # the latent that fires on every row


def dense_source():
    """token_source's rows, latent DENSE firing on all of them (density 1)."""
    src = token_source()
    src["acts"][:, DENSE] = 0.5
    return src


@pytest.fixture(scope="module")
def dense_page(tmp_path_factory):
    record = ablation_result().to_dict()
    record |= {"latents": [DENSE, 5], "density": [0.9, 0.01], "dense": [], "keep_dense": True}
    unnamed = ablation_result().to_dict()  # written before concepts had names: no "concept"
    named = {"concept": "fives", "target": "token: five", **ablation_result().to_dict()}
    path = tmp_path_factory.mktemp("dense") / "index.html"
    ablations = [{**record, "concept": "zeros"}, {**unnamed, "file": "ablation.json"}, named]
    return build_dashboard(OneHotSAE(), dense_source(), path, ablations=ablations, progress=False)


def test_dense_latents_use_the_one_threshold(dense_page):
    index = load_js(dense_page.parent / "data" / "index.js", "index")
    assert index["dense_above"] == DENSE_FRACTION  # the ablate CLI's --dense-above default
    assert index["density"][DENSE] == 1 and max(index["density"][1:]) < DENSE_FRACTION
    assert index["ablated"][str(DENSE)] == ["zeros"]


def test_ablation_tables_flag_dense_latents_and_name_every_experiment(dense_page):
    text = (dense_page.parent / "ablation.html").read_text()
    assert "unnamed" not in text and "unnamed" not in dense_page.read_text()
    assert "concept <q>zeros</q>" in text and "concept <q>fives</q>" in text
    assert "concept <q>ablation.json</q>" in text  # an old record is named by its file
    rows = re.findall(r"<tr><td><a href=\"latent.html\?id=(\d+)\">.*?</tr>", text)
    assert rows[:2] == [str(DENSE), "5"]
    first, second = text.split('<table class="ablated">')[1].split("</tr>")[1:3]
    assert "badge dense" in first and "90%" in first and "100%" in first
    assert "badge dense" not in second
    assert "(1 dense)" in dense_page.read_text()  # the index's list of experiments


def test_browser_index_lists_dense_latents_last_and_flags_them(dense_page, tmp_path):
    index = dom(tmp_path, dense_page.as_uri())
    ids = re.findall(r'<tr data-id="(\d+)">', index)
    assert len(ids) == VOCAB and ids[-1] == str(DENSE)
    last = index.split(f'<tr data-id="{DENSE}">')[1].split("</tr>")[0]
    assert 'class="badge dense"' in last
    latent = dom(tmp_path, dense_page.parent.as_uri() + f"/latent.html?id={DENSE}")
    assert '<span class="badge dense"' in latent and "dense, fires on more than 10.0%" in latent


def test_run_ablations_reads_every_concept_file(tmp_path):
    run = RunDir(tmp_path)
    record = ablation_result().to_dict()
    run.ablation_file().write_text(json.dumps(record))  # an old run's single file
    for concept in ("cats", "dogs and wolves"):
        path = run.concept_ablation_file(concept)
        path.parent.mkdir(exist_ok=True)
        path.write_text(json.dumps({"concept": concept, **record}))
    assert run.concept_ablation_file("dogs and wolves").name == "dogs-and-wolves.json"
    found = run_ablations(tmp_path)
    assert [a.get("concept") for a in found] == [None, "cats", "dogs and wolves"]
    assert [a["file"] for a in found] == [
        "ablation.json",
        "ablation/cats.json",
        "ablation/dogs-and-wolves.json",
    ]


def test_frontier_one_colour_and_marker_per_architecture(tmp_path):
    pytest.importorskip("matplotlib")
    from matplotlib.figure import Figure

    rows = [
        {"name": f"{arch}-k{k}", "architecture": arch, "point": "resid_post.3", "l0": l0, "fvu": f}
        for arch, k, l0, f in [
            ("batchtopk", 16, 15.6, 0.31),
            ("batchtopk", 32, 30.5, 0.25),
            ("jumprelu", 16, 17.0, 0.30),
            ("topk", 32, 31.9, 0.27),
        ]
    ]
    drawn = []
    original = Figure.savefig

    def keep(fig, *args, **kw):
        drawn.append(fig)
        return original(fig, *args, **kw)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Figure, "savefig", keep)
        assert plot_frontier(rows, tmp_path / "f.png").stat().st_size > 5000
    ax = drawn[0].axes[0]
    lines = [line for line in ax.get_lines() if line.get_xdata().size]
    assert [line.get_label() for line in lines] == ["batchtopk", "jumprelu", "topk"]
    assert len({line.get_color() for line in lines}) == len({line.get_marker() for line in lines})
    assert len({line.get_marker() for line in lines}) == 3
    assert ax.get_legend() is not None
    drawn[0].canvas.draw()
    lo, hi = ax.get_xlim()
    labels = [t for t in ax.get_xticklabels() if t.get_text() and lo <= t.get_position()[0] <= hi]
    boxes = [t.get_window_extent() for t in labels]
    assert len(labels) >= 2 and all("^" not in t.get_text() for t in labels)  # plain numbers
    assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1 :])
    frame = drawn[0].bbox
    for text in ax.texts:  # every point's label inside the figure
        box = text.get_window_extent()
        assert frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0 <= frame.y1
    assert {t.get_text() for t in ax.texts} == {"k16", "k32"}  # architecture in the legend


def test_wide_sweep_table_scrolls(tmp_path):
    sweep = [{"name": f"sae-{i}", **{f"column_{c}": 0.123456 for c in range(20)}} for i in range(3)]
    sweep[0] |= {"l0": 10.0, "fvu": 0.3}
    index = build_dashboard(
        OneHotSAE(), torch.relu(torch.randn(50, VOCAB)), tmp_path, sweep=sweep, progress=False
    )
    assert '<div class="scroll"><table id="sweep-table">' in index.read_text()
    css = (tmp_path / "assets" / "dashboard.css").read_text()
    assert re.search(r"\.scroll \{ overflow-x: auto", css)
