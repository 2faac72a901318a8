"""What the commands share at run time: the run directory, its recorded model and
corpus, the model, the input batches, and the SAE a command works on."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from sae_hooks.cli.options import DEFAULT_CONTEXT, DEFAULT_DATA
from sae_hooks.rundir import DEFAULT_SAE, RunDir
from sae_hooks.store.lock import LockedError

# The library's own errors about the user's input or environment, shown as one line:
# a bad value (ValueError and its subclasses: DeviceUnavailableError, StoreDamagedError,
# StoreMismatchError ...), a missing or unreadable file (OSError), a missing optional
# package (ImportError), a store or run another process holds (LockedError). Anything
# else (a TypeError, a RuntimeError) is a bug and keeps its traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, OSError, ImportError, LockedError)


class Interrupted(Exception):
    """Ctrl-C during a step that resumes: say where it stopped."""


def run_dir(args: argparse.Namespace) -> RunDir:
    return RunDir.named(args.run, args.cache)


def use_record(args: argparse.Namespace, where: Path) -> None:
    """Fill the model and corpus flags not given from the run's run.json."""
    from sae_hooks.runrecord import read_run_record

    record = read_run_record(where)
    args.record = record
    args.family_given = args.family is not None
    if record is None:
        return
    model = record.model
    if args.family is None:
        args.family = model.get("family")
        args.model_dir = args.model_dir or model.get("model_dir")
        args.tiny = args.tiny or bool(model.get("tiny"))
    elif model.get("family") and args.family != model.get("family"):
        raise ValueError(
            f"--family {args.family} differs from the run's model {model.get('family')} "
            f"({RunDir(where).record}); drop --family to use the recorded model"
        )
    corpus = record.corpus
    for key in ("data", "context_length"):
        if getattr(args, key, None) is None and corpus.get(key) is not None:
            setattr(args, key, corpus[key])
    if hasattr(args, "text_field") and args.text_field == "text" and corpus.get("text_field"):
        args.text_field = corpus["text_field"]


def apply_defaults(args: argparse.Namespace) -> None:
    """--data and --context-length when neither the flags nor the run gave them."""
    if getattr(args, "data", None) is None and hasattr(args, "data"):
        args.data = DEFAULT_DATA
    if getattr(args, "context_length", None) is None and hasattr(args, "context_length"):
        args.context_length = DEFAULT_CONTEXT


def family_of(args: argparse.Namespace) -> Any:
    """The ModelFamily record of --family (or the run's)."""
    from sae_hooks.models import FAMILIES, model_family

    if not args.family:
        hint = (
            ""
            if args.command in ("capture", "inspect")
            else (": the run has no run.json to read it from (capture it first, or pass --family)")
        )
        raise ValueError(f"--family is required (one of {', '.join(FAMILIES)}){hint}")
    return model_family(args.family)


def load_model(args: argparse.Namespace) -> tuple[Any, Any]:
    """(model, tokenizer or image processor) of --family, --model-dir, --tiny."""
    from sae_hooks.devices import available_device
    from sae_hooks.models import load_model as load

    family = family_of(args)
    available_device(args.device)
    return load(
        family.name,
        args.model_dir,
        tiny=args.tiny,
        device=args.device,
        trust_remote_code=args.trust_remote_code,
    )


def starts_with_bos(args: argparse.Namespace) -> bool:
    """Whether contexts start with BOS, and that position stays out of stores and FVU."""
    return family_of(args).prepend_bos


def input_batches(
    args: argparse.Namespace, model: Any, processor: Any, part: str, max_eval: int = 0
):
    """The batches of --data for one part of its split: "train", "held-out" or "all"."""
    from sae_hooks.data import image_batches, load_texts, text_batches
    from sae_hooks.data.splits import split_batches, split_texts

    if family_of(args).vision:
        if args.data in (None, DEFAULT_DATA):
            raise ValueError("ViT needs --data pointing at a folder of images")
        size = model.config.image_size
        images = image_batches(args.data, image_size=size, batch_size=args.batch_size)
        if part == "all":
            return images
        kept, held = split_batches(images, max_eval or 10**9)
        return kept if part == "train" else held
    texts = load_texts(args.data, text_field=args.text_field)
    if part != "all":
        train_texts, held = split_texts(texts, f"--data {args.data}")
        texts = train_texts if part == "train" else held
    return text_batches(
        texts,
        processor,
        context_length=args.context_length,
        batch_size=args.batch_size,
        prepend_bos=starts_with_bos(args),
    )


def sae_dir(args: argparse.Namespace) -> Path:
    """--sae, else the run's SAE called --name."""
    return Path(args.sae) if args.sae else run_dir(args).sae_dir(args.name)


def trained_config(sae_path: Path) -> dict[str, Any]:
    """The training config beside an SAE directory ({} when there is none)."""
    config = sae_path.parent / RunDir.TRAIN_CONFIG
    if not config.is_file():
        return {}
    try:
        data = json.loads(config.read_text())
    except ValueError:
        data = None
    if not isinstance(data, dict):
        raise ValueError(f"{config} is not a JSON object (a damaged training config)")
    return data


def sae_and_point(args: argparse.Namespace) -> tuple[Any, str]:
    """The SAE of --sae / --name and its hook point (--point must match the trained one)."""
    from sae_hooks.sae import load_sae

    where = sae_dir(args)
    if not where.exists():  # a file is load_sae's to name (a pickle, say)
        raise FileNotFoundError(
            f"no SAE at {where}; train one with `sae-hooks train --run {args.run}"
            + (f" --name {args.name}`" if args.name != DEFAULT_SAE else "`")
            + " or point --sae at an SAE directory"
        )
    sae = load_sae(where, device=getattr(args, "device", "cpu")).eval()
    trained_on = trained_config(where).get("point")
    point = args.point or trained_on
    if point is None:
        raise ValueError(f"--point is needed: {where} does not record its hook point")
    if trained_on is not None and point != trained_on:
        raise ValueError(
            f"--point {point} differs from {trained_on!r}, the point the SAE at {where} was "
            f"trained on ({where.parent / RunDir.TRAIN_CONFIG}); drop --point or give "
            f"{trained_on}"
        )
    return sae, point


def check_model_matches_store(args: argparse.Namespace, model: Any) -> None:
    """The run's own SAE must meet the model its store was captured from (--family, --model-dir)."""
    from sae_hooks.store import open_store
    from sae_hooks.store.capture import model_name_of

    store_dir = run_dir(args).store
    if getattr(args, "record", None) is not None and not getattr(args, "family_given", True):
        return  # the model came from the run's own run.json
    if args.sae or not (store_dir / "zarr.json").is_file():
        return
    captured, given = open_store(str(store_dir)).model, model_name_of(model)
    if captured and captured != given:
        raise ValueError(
            f"--family {args.family} loads model {given!r}, but the SAE of run {args.run!r} was "
            f"trained on activations of {captured!r} ({store_dir}); give the --family and "
            "--model-dir of the capture"
        )


def target_point(args: argparse.Namespace) -> str:
    """A transcoder's output point: --target-point, else the one its run trained on."""
    where = sae_dir(args)
    target = getattr(args, "target_point", None)
    if target is None and (where.parent / RunDir.TRAIN_CONFIG).is_file():
        target = json.loads((where.parent / RunDir.TRAIN_CONFIG).read_text()).get("target_point")
    if target is None:
        raise ValueError(f"--target-point is needed: {where} does not record its output point")
    return target


def output(args: argparse.Namespace, filename: str) -> Path:
    """Where an SAE's eval.json or ablation.json goes: beside --sae, else the run's
    outputs of --name (the root for the default SAE, its home for another)."""
    if args.sae:
        out = Path(args.sae).parent / filename
    else:
        out = run_dir(args).outputs(args.name) / filename
    out.parent.mkdir(parents=True, exist_ok=True)
    return out


def model_for_sae(args: argparse.Namespace) -> tuple[Any, Any]:
    """The run's model (flags, else run.json) and its tokenizer or image processor."""
    use_record(args, Path(args.sae) if args.sae else run_dir(args).root)
    apply_defaults(args)
    return load_model(args)
