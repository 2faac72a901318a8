"""plot_training: a readable PNG from a run's log, tolerant of what the log holds."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("matplotlib")
import matplotlib.image

from sae_hooks.report import plot_training, read_records
from sae_hooks.report.curves import series


def write_log(path, n_steps=40, batch=256, val_every=10, extra_line=""):
    lines = []
    for step in range(5, n_steps + 1, 5):
        lines.append(
            {
                "step": step,
                "tokens": step * batch,
                "loss": 10 / step,
                "fvu": 1 / step,
                "l0": 32.0,
                "dead_fraction": 0.01 * step,
                "dense_fraction": 0.0,
                "aux_loss": 0.0,
                "lr": 1e-3,
            }
        )
        if step % val_every == 0:
            lines.append({"step": step, "val/fvu": 1.1 / step, "val/l0": 30.0})
    path.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(r) + "\n" for r in lines) + extra_line
    (path / "log.jsonl").write_text(text)
    return path


@pytest.mark.parametrize("given", ["run_dir", "log_file"])
def test_png_is_written_and_readable(tmp_path, given):
    run = write_log(tmp_path / "run")
    src = run if given == "run_dir" else run / "log.jsonl"
    out = plot_training(src, tmp_path / "out" / "training.png", dpi=100)
    assert out.stat().st_size > 20_000  # five panels of lines, not an empty canvas
    image = matplotlib.image.imread(out)
    assert image.shape[:2] == (600, 1260)  # 2 x 3 panels of 4.2 x 3.0 inches at 100 dpi
    assert image[..., :3].std() > 0.05  # there is something drawn


def test_validation_points_are_placed_by_tokens(tmp_path):
    records = read_records(write_log(tmp_path, batch=128))
    xs, ys, label = series(records, "val/fvu")
    assert label == "tokens"
    assert xs == [10 * 128, 20 * 128, 30 * 128, 40 * 128]
    assert ys == pytest.approx([1.1 / s for s in (10, 20, 30, 40)])


def test_torn_last_line_and_missing_keys_are_tolerated(tmp_path):
    run = write_log(tmp_path, extra_line='{"step": 45, "tok')
    (run / "log.jsonl").write_text(
        (run / "log.jsonl").read_text().replace('"lr": 0.001', '"lr": null')
    )
    assert len(read_records(run)) == 12
    out = plot_training(run, tmp_path / "t.png", dpi=60)
    assert matplotlib.image.imread(out).shape[:2] == (360, 756)  # four panels, still 2 x 3


def test_log_without_metrics_is_a_clear_error(tmp_path):
    (tmp_path / "log.jsonl").write_text('{"step": 1, "tokens_per_s": 5.0}\n')
    with pytest.raises(ValueError, match="no plottable metric"):
        plot_training(tmp_path, tmp_path / "x.png")
    with pytest.raises(FileNotFoundError, match=r"log\.jsonl"):
        plot_training(tmp_path / "nowhere", tmp_path / "x.png")
