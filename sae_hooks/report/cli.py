"""`sae-hooks report RUN_DIR`: argparse wiring for the main CLI to call."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from sae_hooks.report.build import build_report


def _latent_ids(text: str) -> list[int]:
    try:
        return [int(t) for t in text.replace(",", " ").split()]
    except ValueError as err:
        raise argparse.ArgumentTypeError(
            f"--latents takes latent ids separated by commas, e.g. 3,17,42; got {text!r}"
        ) from err


def add_report_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the `report` subcommand; its handler is set as the `func` default."""
    p = subparsers.add_parser(
        "report",
        help="training curves and an HTML feature dashboard for a run",
        description="Write RUN_DIR/report/ (open index.html in a browser, no server "
        "needed): the run at a glance, an index of every latent, a page per latent, "
        "training.png.",
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run directory written by train")
    p.add_argument("--store", help="activation store (path or URL) to compute the dashboard on")
    p.add_argument("--point", help="hook point in the store (default: the run's own)")
    p.add_argument("--tokenizer", help="local tokenizer directory, to show tokens as text")
    p.add_argument("--out", help="output directory (default: RUN_DIR/report)")
    p.add_argument("--images", help="folder of the images an image store was captured from")
    p.add_argument("--latents", type=_latent_ids, default=[], help="extra latent ids, e.g. 3,17")
    p.add_argument(
        "--n-latents",
        type=int,
        help="examples only for the N most often firing latents (default: all latents)",
    )
    p.add_argument("--n-examples", type=int, default=8, help="top contexts per latent")
    p.add_argument("--max-rows", type=int, help="scan only the first N rows of the store")
    p.add_argument(
        "--ablation",
        action="append",
        default=[],
        metavar="JSON",
        help="an AblationResult saved with to_json() (repeatable)",
    )
    p.set_defaults(func=run_report)
    return p


def _read_ablation(path: str) -> dict:
    """One --ablation file: a JSON object, or an error naming the file."""
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"--ablation {path}: no such file") from None
    except (ValueError, UnicodeDecodeError) as err:
        raise ValueError(f"--ablation {path} is not valid JSON: {err}") from None
    if not isinstance(data, dict):
        raise ValueError(f"--ablation {path} must hold a JSON object (AblationResult.to_json())")
    return data


def run_report(args: argparse.Namespace) -> int:
    ablations = [_read_ablation(path) for path in args.ablation] or None
    index = build_report(
        args.run_dir,
        store=args.store,
        point=args.point,
        tokenizer=args.tokenizer,
        ablations=ablations,
        images=args.images,
        out=args.out,
        latents=args.latents,
        n_latents=args.n_latents,
        n_examples=args.n_examples,
        max_rows=args.max_rows,
    )
    print(f"report written to {index}")
    return 0
