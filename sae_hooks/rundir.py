"""RunDir: the one owner of a run directory's layout (every file and folder name in it).

    cache/<run>/
      run.json            what made the run (sae_hooks.runrecord)
      store/              the activations (capture)
      train/              the default SAE's home: config.json, log.jsonl, sae/, checkpoint/
      <name>/             another SAE's home (`--name`), with its own eval.json, report/, ...
      eval.json, eval_core.json, ablation.json, ablation.png, ablation/<concept>.json,
      report/, summary.txt  the default SAE's outputs, at the root
      sweep/              a grid of SAEs (train_many): sweep.json, <sae>/; with
      frontier.png, sweep.md  its L0-FVU frontier and table
      export-<format>/    exports (saelens, hf, neuronpedia)

Every module that reads or writes a run directory asks a RunDir for the path, so a
name is spelled here once, and `owns(path)` says what the run made (what
`--overwrite` may delete).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

DEFAULT_SAE = "train"


def cache_dir() -> Path:
    """Where runs live by default: $SAE_HOOKS_CACHE, else ./cache."""
    return Path(os.environ.get("SAE_HOOKS_CACHE", "cache"))


def _check_plain(name: str, what: str) -> str:
    if not name or name in (".", "..") or "/" in name or "\\" in name or name.startswith("."):
        raise ValueError(
            f"{what} {name!r} must be a plain directory name (no '/', not starting with '.')"
        )
    return name


class RunDir:
    """A run directory and the paths of everything in it."""

    RECORD = "run.json"
    STORE = "store"
    SWEEP = "sweep"
    EVAL = "eval.json"
    EVAL_CORE = "eval_core.json"
    ABLATION = "ablation.json"
    ABLATION_PLOT = "ablation.png"
    ABLATIONS = "ablation"  # ablation/<concept>.json: one file per named concept (`ablate`)
    REPORT = "report"
    SUMMARY = "summary.txt"
    FRONTIER = "frontier.png"  # a sweep run's L0-FVU frontier and its table
    SWEEP_MARKDOWN = "sweep.md"
    EXPORT_PREFIX = "export-"
    # An SAE's home (written by train()): these names are the trainer's layout.
    SAE = "sae"
    TRAIN_CONFIG = "config.json"
    LOG = "log.jsonl"
    DEFAULT_SAE = DEFAULT_SAE
    # Entries of the root that an SAE name may not take.
    RESERVED = frozenset(
        {
            RECORD,
            STORE,
            SWEEP,
            EVAL,
            EVAL_CORE,
            ABLATION,
            ABLATION_PLOT,
            ABLATIONS,
            REPORT,
            SUMMARY,
            FRONTIER,
            SWEEP_MARKDOWN,
        }
    )

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"RunDir({str(self.root)!r})"

    @classmethod
    def named(cls, name: str, cache: str | os.PathLike | None = None) -> RunDir:
        """cache/<name>, refusing names that would escape the cache directory."""
        _check_plain(name, "run name")
        return cls((Path(cache) if cache is not None else cache_dir()) / name)

    # ---------------------------------------------------------------- the root's entries

    @property
    def record(self) -> Path:
        return self.root / self.RECORD

    @property
    def store(self) -> Path:
        return self.root / self.STORE

    @property
    def sweep(self) -> Path:
        return self.root / self.SWEEP

    @property
    def summary(self) -> Path:
        return self.root / self.SUMMARY

    @property
    def frontier(self) -> Path:
        return self.root / self.FRONTIER

    @property
    def sweep_table(self) -> Path:
        return self.root / self.SWEEP_MARKDOWN

    def export_dir(self, fmt: str) -> Path:
        return self.root / f"{self.EXPORT_PREFIX}{_check_plain(fmt, 'export format')}"

    # ---------------------------------------------------------------- one SAE of the run

    @classmethod
    def check_sae_name(cls, name: str) -> str:
        """`name` if it can name an SAE's home in a run; else a one-line ValueError."""
        _check_plain(name, "SAE name")
        if name in cls.RESERVED or name.startswith(cls.EXPORT_PREFIX):
            raise ValueError(
                f"SAE name {name!r} is a reserved entry of the run directory "
                f"({', '.join(sorted(cls.RESERVED))}, export-*); pick another --name"
            )
        return name

    def sae_home(self, name: str = DEFAULT_SAE) -> Path:
        """run/<name>/: what train() writes for one SAE (config.json, log.jsonl, sae/)."""
        return self.root / self.check_sae_name(name)

    def sae_dir(self, name: str = DEFAULT_SAE) -> Path:
        return self.sae_home(name) / self.SAE

    def train_config(self, name: str = DEFAULT_SAE) -> Path:
        return self.sae_home(name) / self.TRAIN_CONFIG

    def outputs(self, name: str = DEFAULT_SAE) -> Path:
        """Where eval.json, ablation.json and report/ of an SAE go: the root for the
        default SAE, its home for another."""
        return self.root if name == DEFAULT_SAE else self.sae_home(name)

    def eval_file(self, name: str = DEFAULT_SAE) -> Path:
        return self.outputs(name) / self.EVAL

    def ablation_file(self, name: str = DEFAULT_SAE) -> Path:
        return self.outputs(name) / self.ABLATION

    @classmethod
    def concept_ablation_name(cls, concept: str) -> str:
        """ablation/<concept>.json; characters a file name should not hold become '-'."""
        stem = re.sub(r"[^A-Za-z0-9_.-]+", "-", concept).strip("-.") or "concept"
        return f"{cls.ABLATIONS}/{stem}.json"

    def concept_ablation_file(self, concept: str, name: str = DEFAULT_SAE) -> Path:
        return self.outputs(name) / self.concept_ablation_name(concept)

    def ablation_files(self, name: str = DEFAULT_SAE) -> list[Path]:
        """Every ablation result of an SAE: ablation.json (pipelines, older runs), then
        ablation/<concept>.json by name."""
        single = [self.ablation_file(name)] if self.ablation_file(name).is_file() else []
        return single + sorted((self.outputs(name) / self.ABLATIONS).glob("*.json"))

    def ablation_plot(self, name: str = DEFAULT_SAE) -> Path:
        return self.outputs(name) / self.ABLATION_PLOT

    def report_dir(self, name: str = DEFAULT_SAE) -> Path:
        return self.outputs(name) / self.REPORT

    def sae_names(self) -> list[str]:
        """The SAEs trained in this run (homes holding sae/), sorted."""
        homes = (p.parent.name for p in self.root.glob(f"*/{self.SAE}") if p.is_dir())
        return sorted(
            n for n in homes if n not in self.RESERVED and not n.startswith(self.EXPORT_PREFIX)
        )

    # ---------------------------------------------------------------- what the run owns

    def owns(self, path: str | os.PathLike) -> bool:
        """Whether `path` is an entry this layout makes (a file or folder the run wrote)."""
        p = Path(path)
        try:
            rel = p.resolve().relative_to(self.root.resolve())
        except ValueError:
            return False
        if not rel.parts:
            return False
        first = rel.parts[0]
        if first in self.RESERVED or first.startswith(self.EXPORT_PREFIX):
            return True
        home = self.root / first
        return any((home / entry).exists() for entry in (self.SAE, self.LOG, self.TRAIN_CONFIG))

    # ------------------------------------------------- a path that may be a run or a home

    @classmethod
    def is_sae_home(cls, path: str | os.PathLike) -> bool:
        return (Path(path) / cls.SAE).is_dir()

    @classmethod
    def home_of(cls, path: str | os.PathLike) -> Path | None:
        """The SAE home at `path`: itself (it holds sae/) or a run's default train/."""
        p = Path(path)
        if cls.is_sae_home(p):
            return p
        if cls.is_sae_home(p / DEFAULT_SAE):
            return p / DEFAULT_SAE
        return None

    @classmethod
    def outputs_of(cls, home: str | os.PathLike) -> Path:
        """Where an SAE home's eval.json and report/ live: the run for the default
        train/, the home itself otherwise (a `train()` directory, a named SAE)."""
        home = Path(home)
        return home.parent if home.name == DEFAULT_SAE else home
