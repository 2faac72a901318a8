"""recipes/minilm_sweep.py --tiny: capture 2 layers, train 8 SAEs together, eval, frontier."""

import json
import runpy
from pathlib import Path

RECIPE = Path(__file__).parents[1] / "recipes" / "minilm_sweep.py"


def test_tiny_sweep_writes_the_frontier(tmp_path, capsys):
    recipe = runpy.run_path(str(RECIPE), run_name="recipe")
    run = recipe["main"](["--tiny", "--cache", str(tmp_path), "--quiet"])
    saes = json.loads((run / "sweep" / "sweep.json").read_text())["saes"]
    assert len(saes) == 8 and {s["config"]["point"] for s in saes} == {
        "resid_post.1",
        "resid_post.3",
    }
    for s in saes:
        ev = json.loads((run / "sweep" / s["name"] / "eval.json").read_text())
        assert ev["kind"] == "encoder" and ev["l0"] > 0 and "cosine_recovered" in ev["downstream"]
    assert (run / "frontier.png").stat().st_size > 1000
    table = (run / "sweep.md").read_text()
    assert all(s["name"] in table for s in saes) and "cosine_recovered" in table
    html = (run / "report" / "index.html").read_text()
    assert "sweep-table" in html and (run / "report" / "sweep.png").is_file()
    assert "frontier.png" in capsys.readouterr().out
