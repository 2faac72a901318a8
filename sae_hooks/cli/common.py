"""What the commands share at run time: the run directory, its recorded model and
corpus, the model, the input batches, and the SAE a command works on."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from sae_hooks.cli.options import DEFAULT_CONTEXT, DEFAULT_DATA
from sae_hooks.jsonio import loads
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
    args.model_given = bool(args.model or args.family)
    if record is None:
        return
    model = record.model
    if not args.model_given:
        _use_recorded_model(args, model)
    elif args.family and not args.model and model.get("family") not in (None, args.family):
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
    if "part" in corpus and hasattr(args, "split"):  # older records' "split" was the part
        args.split = args.split or corpus.get("split")
        args.streaming = args.streaming or bool(corpus.get("streaming"))
        args.skip_invalid_rows = args.skip_invalid_rows or bool(corpus.get("skip_invalid"))


def _use_recorded_model(args: argparse.Namespace, model: dict[str, Any]) -> None:
    """The recorded model: its name_or_path at the recorded commit, dtype and backend;
    records of --tiny runs (and older ones) name a family."""
    if model.get("name_or_path"):
        args.model = model["name_or_path"]
        args.revision = args.revision or model.get("commit") or model.get("revision")
    else:
        args.family = model.get("family")
        args.model_dir = args.model_dir or model.get("model_dir")
        args.tiny = args.tiny or bool(model.get("tiny"))
    args.dtype = args.dtype or model.get("dtype")
    args.backend = args.backend or model.get("backend")
    if hasattr(args, "trust_remote_code"):  # the capture's explicit opt-in, as recorded
        args.trust_remote_code = args.trust_remote_code or bool(model.get("trust_remote_code"))


def apply_defaults(args: argparse.Namespace) -> None:
    """--data and --context-length when neither the flags nor the run gave them."""
    if getattr(args, "data", None) is None and hasattr(args, "data"):
        args.data = DEFAULT_DATA
    if getattr(args, "context_length", None) is None and hasattr(args, "context_length"):
        args.context_length = DEFAULT_CONTEXT


OLD_PARTS = ("train", "all", "held-out")  # what --split meant before it named dataset splits


def resolve_part(args: argparse.Namespace, default: str) -> str:
    """--part (default `default`); an old `--split train|all|held-out` is taken as the
    part, with a deprecation note, unless --part is given too."""
    if args.part is None and args.split in OLD_PARTS:
        print(
            f"warning: --split {args.split} is deprecated for choosing the held-out part: "
            f"use --part {args.split} (--split now names a dataset's split)",
            file=sys.stderr,
        )
        args.part, args.split = args.split, None
    args.part = args.part or default
    return args.part


def family_of(args: argparse.Namespace) -> Any:
    """The ModelFamily record of the loaded model (a named one for --tiny, else derived
    from its config: sae_hooks.auto_models.generic_family)."""
    loaded = getattr(args, "loaded", None)
    if loaded is None:
        raise ValueError("no model loaded yet (give --model)")
    return loaded.family


def _family_alias(args: argparse.Namespace) -> None:
    """--family F [--model-dir DIR] as --model DIR (deprecated); --family minilm is the
    bundled MiniLM, read offline as before. --family F --tiny stays the random-init F."""
    from sae_hooks.models import check_model_dir, model_family, offline

    if not args.family or args.tiny:
        return
    if args.model:
        raise ValueError("give --model or --family, not both (--family is deprecated)")
    family = model_family(args.family)
    bundled = args.model_dir is None and family.bundled_dir is not None
    if bundled:
        offline()
    path = check_model_dir(
        family.weights_family, family.bundled_dir() if bundled else args.model_dir
    )
    args.model = str(path.resolve())
    if family.backend == "tl":
        args.backend = "transformer-lens"
    if getattr(args, "family_given", True) and not bundled:  # --family minilm: the default
        tl = " --backend transformer-lens" if family.backend == "tl" else ""
        print(f"warning: --family is deprecated: use --model {args.model}{tl}", file=sys.stderr)


def missing_model(args: argparse.Namespace) -> ValueError:
    hint = (
        ""
        if args.command in ("capture", "inspect")
        else ": the run has no run.json to read it from (capture it first, or pass --model)"
    )
    return ValueError(
        "--model is required: a hub id (e.g. gpt2) or a local model directory "
        f"(or --family F --tiny for a random-init model){hint}"
    )


def load_model(args: argparse.Namespace) -> tuple[Any, Any]:
    """(model, tokenizer or image processor) of --model (or the run's), or of the deprecated
    --family / --model-dir / --tiny; the family record and identity go to args.loaded."""
    from sae_hooks.auto_models import DTYPES, LoadedModel, load_any
    from sae_hooks.devices import available_device
    from sae_hooks.models import load_model as load_family
    from sae_hooks.models import model_family

    available_device(args.device)
    _family_alias(args)
    if args.model:
        args.loaded = load_any(
            args.model,
            revision=args.revision,
            dtype=args.dtype,
            device=args.device,
            trust_remote_code=args.trust_remote_code,
            backend=args.backend or "hf",
        )
    elif args.family:  # --family F --tiny
        family = model_family(args.family)
        model, processor = load_family(args.family, tiny=True, device=args.device)
        model = model.to(DTYPES[args.dtype or "float32"])
        args.loaded = LoadedModel(model, processor, family, tiny_identity(args, model))
    else:
        raise missing_model(args)
    return args.loaded.model, args.loaded.processor


def tiny_identity(args: argparse.Namespace, model: Any) -> dict[str, Any]:
    """run.json's model entry of a random-init family model (no name_or_path: rebuilt)."""
    from sae_hooks.auto_models import runtime_identity
    from sae_hooks.models import model_family
    from sae_hooks.runrecord import model_record

    family = model_family(args.family)
    config = getattr(model, "config", None)
    return {
        **model_record(args.family, None, tiny=True),
        "name_or_path": None,
        "model_type": getattr(config, "model_type", None),
        "head": type(model).__name__,
        "dtype": args.dtype or "float32",
        "backend": "transformer-lens" if family.backend == "tl" else "hf",
        "prepend_bos": family.prepend_bos,
        **runtime_identity(model),
    }


def starts_with_bos(args: argparse.Namespace) -> bool:
    """Whether contexts start with BOS, and that position stays out of stores and FVU."""
    return family_of(args).prepend_bos


def input_batches(
    args: argparse.Namespace, model: Any, processor: Any, part: str, max_eval: int = 0
):
    """The batches of --data for one part of its split: "train", "held-out" or "all"."""
    from sae_hooks.data import image_batches, open_documents, text_batches
    from sae_hooks.data.splits import split_batches, split_documents

    if family_of(args).vision:
        if args.data in (None, DEFAULT_DATA):
            raise ValueError("a vision model needs --data pointing at a folder of images")
        size = model.config.image_size
        images = image_batches(args.data, image_size=size, batch_size=args.batch_size)
        if part == "all":
            return images
        kept, held = split_batches(images, max_eval or 10**9)
        return kept if part == "train" else held
    docs = open_documents(
        args.data,
        split=getattr(args, "split", None),
        text_field=args.text_field,
        streaming=bool(getattr(args, "streaming", False)),
        skip_invalid=bool(getattr(args, "skip_invalid_rows", False)),
    )
    return text_batches(
        split_documents(docs, part),
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
        data = loads(config.read_text(), str(config))
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
    """The run's own SAE must meet the model its store was captured from (--model)."""
    from sae_hooks.store import open_store
    from sae_hooks.store.capture import model_name_of

    store_dir = run_dir(args).store
    if getattr(args, "record", None) is not None and not getattr(args, "model_given", True):
        return  # the model came from the run's own run.json
    if args.sae or not (store_dir / "zarr.json").is_file():
        return
    captured, given = open_store(str(store_dir)).model, model_name_of(model)
    if captured and captured != given:
        flag = f"--model {args.model}" if args.model else f"--family {args.family}"
        raise ValueError(
            f"{flag} loads model {given!r}, but the SAE of run {args.run!r} was trained on "
            f"activations of {captured!r} ({store_dir}); give the --model of the capture "
            "(or drop it to use the run's)"
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


def check_token_target(model: Any, target: str) -> None:
    """A token target scores the next token over the model's vocabulary: only a language
    model (a head over the vocabulary) has one; an encoder's output is its hidden size."""
    from sae_hooks.model_outputs import model_kind

    kind = model_kind(model)
    if kind == "lm":
        return
    what = "a classifier" if kind == "classifier" else "an encoder"
    valid = "similarity or class:INDEX" if kind == "classifier" else "similarity"
    raise ValueError(
        f"--target {target}: {type(model).__name__} is {what} with no language-model head, so "
        f"there is no vocabulary to score a next token over; valid targets for it: {valid}"
    )


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
