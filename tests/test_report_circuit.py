"""The circuit page: nodes by point with their top tokens, weighted edges, linked from
the report's index, rendered by headless Chromium."""

from __future__ import annotations

import torch
from test_report_dashboard import chromium

from sae_hooks.eval import Circuit, CircuitEdge, CircuitNode
from sae_hooks.report import build_report
from sae_hooks.report.circuit import circuit_links, layout, write_circuit_page


def small_circuit() -> Circuit:
    up, down = "resid_post.2", "resid_post.3"
    tokens = [{"token": 7, "text": "<script>", "activation": 3.0}, {"token": 9, "text": " raise"}]
    nodes = [
        CircuitNode(up, 12, 0.5, tokens),
        CircuitNode(up, 40, -0.2, tokens[1:]),
        CircuitNode(up, None, 0.05),
        CircuitNode(down, 3, 0.8, tokens),
        CircuitNode(down, None, -0.1),
    ]
    edges = [
        CircuitEdge(f"{up}#12", f"{down}#3", 0.4),
        CircuitEdge(f"{up}#40", f"{down}#3", -0.1),
        CircuitEdge(f"{up}#error", f"{down}#error", 0.02),
    ]
    return Circuit([up, down], nodes, edges, 1.5, 0.1, 0.01, concept="exceptions")


def test_layout_puts_points_in_columns_and_weights_edges():
    drawn = layout(small_circuit())
    xs = {b["id"]: b["x"] for b in drawn["boxes"]}
    assert xs["resid_post.2#12"] == xs["resid_post.2#error"] < xs["resid_post.3#3"]
    ys = {b["id"]: b["y"] for b in drawn["boxes"]}
    assert ys["resid_post.2#12"] < ys["resid_post.2#40"] < ys["resid_post.2#error"]
    widths = [line["width"] for line in drawn["lines"]]
    assert widths[0] == 8.0 and widths[0] > widths[1] > widths[2]
    assert [line["colour"] for line in drawn["lines"]][:2] == ["#1a73e8", "#d93025"]


def test_page_renders_in_headless_chromium(tmp_path):
    page = write_circuit_page(small_circuit(), tmp_path / "circuit.html")
    text = page.read_text()
    assert "<script>" not in text and "&lt;script&gt;" in text  # token text escaped
    done = chromium(tmp_path, "--dump-dom", page.as_uri())
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count('class="node"') == 5
    assert done.stdout.count('class="edge"') == 3
    assert "latent 12" in done.stdout and "raise" in done.stdout
    shot = tmp_path / "shot.png"
    done = chromium(tmp_path, f"--screenshot={shot}", "--window-size=900,600", page.as_uri())
    assert done.returncode == 0 and shot.stat().st_size > 10_000


def test_report_index_links_the_run_circuits(tmp_path):
    from sae_hooks.train import TrainConfig, train

    torch.manual_seed(0)
    cfg = TrainConfig(architecture="topk", nb_concepts=32, k_per_token=2, batch_size=64,
                      steps=5, checkpoint_every=0, progress=False)  # fmt: skip
    train(cfg, torch.randn(512, 16), tmp_path)
    small_circuit().save(tmp_path / "circuits" / "exceptions.json")
    index = build_report(tmp_path, n_latents=2, progress=False)
    assert (tmp_path / "report" / "circuits" / "exceptions.html").is_file()
    assert '<a href="circuits/exceptions.html">exceptions</a>' in index.read_text()
    assert circuit_links(tmp_path / "report") == [
        {"href": "circuits/exceptions.html", "name": "exceptions"}
    ]
    back = (tmp_path / "report" / "circuits" / "exceptions.html").read_text()
    assert 'href="../index.html"' in back
