"""The test suite's own configuration: every marker the tests use is registered.

`pytest -m "not slow"` (the fast development loop in the README) silently selects
everything when `slow` is unregistered or misspelled, so this checks pyproject.toml.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
BUILTIN = {"parametrize", "skip", "skipif", "xfail", "usefixtures", "filterwarnings"}


def registered_markers() -> set[str]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    markers = config["tool"]["pytest"]["ini_options"].get("markers", [])
    return {line.split(":")[0].strip() for line in markers}


def test_slow_marker_is_registered():
    assert "slow" in registered_markers(), "pyproject.toml [tool.pytest.ini_options] markers"


def test_every_marker_used_in_tests_is_registered():
    used = {
        name
        for path in (ROOT / "tests").glob("*.py")
        for name in re.findall(r"pytest\.mark\.(\w+)", path.read_text())
    }
    assert "slow" in used
    assert used - BUILTIN <= registered_markers(), sorted(used - BUILTIN - registered_markers())
