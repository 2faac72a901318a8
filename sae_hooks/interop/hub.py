"""Pretrained SAEs: load_sae / from_pretrained from a local directory or the Hugging Face
Hub, save_pretrained, push_to_hub, and `describe_pretrained` for `sae-hooks inspect`.

A pretrained SAE directory follows the Hub's convention for PyTorch models:

    config.json          the SAE's config (as SAE.save writes it; load_sae reads it)
    model.safetensors    its weights (no pickle)
    sae_hooks.json       where it reads activations: {"point", "hook_name", "model_name",
                         "identity": RunIdentity as a dict, "library": "sae-hooks", "version"}
    README.md            a model card: front matter tags the library (and base_model /
                         datasets when they are hub ids); the body states the identity

`load_sae` / `from_pretrained` take a local directory, a Hub repo id ("org/name",
optionally a revision and a subfolder) or a hf://org/name[@revision]/subfolder URL, and
read either this layout or SAELens's (cfg.json + sae_weights.safetensors, as SAELens's
pretrained releases store each SAE in a folder of one repo), with the checks of a local
load. Hub access goes through huggingface_hub's cache (sae_hooks.interop.resolve):
online the first use downloads, HF_HUB_OFFLINE=1 reads the cache alone.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from sae_hooks.atomic import OutputKind, rebuilt_dir
from sae_hooks.jsonio import loads
from sae_hooks.sae import SAE
from sae_hooks.sae import load_sae as load_sae_dir
from sae_hooks.sae.saving import CONFIG_FILE, WEIGHTS_FILE

from .identity import RunIdentity
from .resolve import HF_URL, METADATA_FILE, is_hub_id, local_sae_dir
from .saelens import SAELENS_CONFIG, SAELENS_WEIGHTS, import_saelens, saelens_metadata

__all__ = [
    "METADATA_FILE",
    "describe_pretrained",
    "from_pretrained",
    "is_pretrained_location",
    "load_pretrained",
    "load_sae",
    "pretrained_metadata",
    "push_to_hub",
    "save_pretrained",
]

_CARD = """---
{front}---

# {title}

A {kind} sparse autoencoder ({nb:,} latents over {d} dimensions) trained with
[sae-hooks](https://pypi.org/project/sae-hooks/){where}.

```python
import sae_hooks
sae = sae_hooks.load_sae("{repo}")
```

## Where its activations come from

{identity}
"""
_IDENTITY_LINES = (
    ("model_name", "model (hub id or path it was loaded from)"),
    ("model_revision", "model revision"),
    ("backend", "backend"),
    ("compatibility_mode", "TransformerLens compatibility mode"),
    ("point", "hook point"),
    ("hook_name", "TransformerLens / SAELens hook name"),
    ("context_size", "context size (tokens)"),
    ("prepend_bos", "BOS prepended"),
    ("dataset_path", "dataset"),
    ("dataset_split", "dataset split"),
    ("normalisation", "input normalisation"),
)


def load_pretrained(
    repo_or_path: str | os.PathLike,
    subfolder: str | None = None,
    revision: str | None = None,
    *,
    device: str | torch.device = "cpu",
    cache_dir: str | os.PathLike | None = None,
    token: str | None = None,
) -> SAE:
    """An SAE from a local directory, a Hub repo id or a hf:// URL, in sae-hooks's layout
    or SAELens's, checked as a local load is (header before allocation, finite values)."""
    where = local_sae_dir(
        repo_or_path, subfolder=subfolder, revision=revision, cache_dir=cache_dir, token=token
    )
    if not where.exists():
        raise FileNotFoundError(
            f"no SAE directory at {where}, and it is not a Hub repo id ('org/name') "
            f"nor a {HF_URL} URL"
        )
    if (where / SAELENS_CONFIG).is_file() and not (where / WEIGHTS_FILE).is_file():
        return import_saelens(where, device=device)
    if where.is_dir() and not (where / CONFIG_FILE).is_file():
        _no_sae_here(where, repo_or_path)
    return load_sae_dir(where, device=device)


def _no_sae_here(where: Path, asked: str | os.PathLike) -> None:
    """A directory (a repo's root, say) with SAEs only in folders: name them."""
    folders = sorted(
        p.parent.relative_to(where).as_posix()
        for config, weights in ((CONFIG_FILE, WEIGHTS_FILE), (SAELENS_CONFIG, SAELENS_WEIGHTS))
        for p in where.glob(f"**/{config}")
        if p.parent != where and (p.parent / weights).is_file()
    )
    if folders:
        shown = ", ".join(folders[:8]) + (
            f" ... ({len(folders)} in all)" if len(folders) > 8 else ""
        )
        raise FileNotFoundError(
            f"{os.fspath(asked)} holds no SAE at {where}, only in folders: {shown}; "
            "pass subfolder= (or append the folder to the hf:// URL)"
        )


def load_sae(
    path: str | os.PathLike,
    device: str | torch.device = "cpu",
    *,
    subfolder: str | None = None,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    token: str | None = None,
) -> SAE:
    """`sae_hooks.load_sae`: `sae_hooks.sae.load_sae` on a local directory, plus Hub repo
    ids ("org/name", with subfolder= and revision=), hf:// URLs and SAELens directories."""
    return load_pretrained(
        path, subfolder, revision, device=device, cache_dir=cache_dir, token=token
    )


def from_pretrained(
    path_or_repo: str | os.PathLike,
    *,
    revision: str | None = None,
    subfolder: str | None = None,
    device: str | torch.device = "cpu",
    cache_dir: str | os.PathLike | None = None,
    token: str | None = None,
) -> SAE:
    """An SAE from a local directory or a Hub repo id ("org/name"), ours or SAELens's."""
    return load_pretrained(
        path_or_repo, subfolder, revision, device=device, cache_dir=cache_dir, token=token
    )


def save_pretrained(
    sae: SAE,
    path: str | os.PathLike,
    *,
    point: str | None = None,
    model_name: str | None = None,
    repo_id: str | None = None,
    identity: RunIdentity | None = None,
) -> Path:
    """Write `sae` in the Hub layout (config.json, model.safetensors, sae_hooks.json,
    README.md); `identity` (point and model_name fill it in) is recorded in both.

    The directory is built beside `path` and swapped in whole (sae_hooks.atomic); an
    existing `path` that is not this layout written by sae-hooks is refused
    (FileExistsError), never overwritten."""
    identity = (identity or RunIdentity()).with_values(point=point, model_name=model_name)
    title = repo_id or Path(path).name
    with rebuilt_dir(path, PRETRAINED_KIND) as folder:
        _write_pretrained(sae, folder, identity, repo_id or str(path), title)
    return Path(path)


def _is_pretrained(folder: Path) -> bool:
    try:
        return json.loads((folder / METADATA_FILE).read_text()).get("library") == "sae-hooks"
    except (OSError, ValueError, AttributeError):
        return False


PRETRAINED_KIND = OutputKind(
    "pretrained SAE (save_pretrained)",
    frozenset({CONFIG_FILE, WEIGHTS_FILE, METADATA_FILE, "README.md"}),
    _is_pretrained,
)


def _write_pretrained(sae: SAE, path: Path, identity: RunIdentity, repo: str, title: str) -> None:
    from sae_hooks import __version__

    sae.save(path)
    meta = {
        "library": "sae-hooks",
        "version": __version__,
        "point": identity.point,
        "hook_name": identity.hook_name,
        "model_name": identity.model_name,
        "identity": identity.to_dict(),
    }
    (path / METADATA_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    (path / "README.md").write_text(model_card(sae, identity, repo, title))


def model_card(sae: SAE, identity: RunIdentity, repo: str, title: str | None = None) -> str:
    """The README.md of a pretrained SAE: what it is, how to load it, where it reads."""
    front = "library_name: sae-hooks\ntags:\n- sparse-autoencoder\n- sae-hooks\n"
    if identity.model_name and is_hub_id(identity.model_name):
        front += f"base_model: {identity.model_name}\n"
    if identity.dataset_path and is_hub_id(identity.dataset_path):
        front += f"datasets:\n- {identity.dataset_path}\n"
    where = f" on `{identity.model_name}`" if identity.model_name else ""
    where += f" at `{identity.point}`" if identity.point else ""
    values = identity.to_dict()
    lines = [
        f"- {label}: {'not recorded' if values[key] is None else f'`{values[key]}`'}"
        for key, label in _IDENTITY_LINES
    ]
    return _CARD.format(
        front=front,
        title=title or repo,
        kind=type(sae).__name__,
        nb=sae.nb_concepts,
        d=sae.input_size,
        where=where,
        repo=repo,
        identity="\n".join(lines),
    )


def pretrained_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """point / hook_name / model_name / identity of a local pretrained directory (either
    layout); {} when it records none."""
    path = Path(path)
    if (path / METADATA_FILE).is_file():
        meta = loads((path / METADATA_FILE).read_text(), str(path / METADATA_FILE))
        if isinstance(meta, dict):
            recorded = meta.get("identity") or meta  # written before identities
            return {**meta, "identity": RunIdentity.from_dict(recorded).to_dict()}
        return {}
    if (path / SAELENS_CONFIG).is_file():
        return saelens_metadata(path)
    return {}


def is_pretrained_location(path: str | os.PathLike) -> bool:
    """A hf:// URL, or a local directory in SAELens's layout (for `inspect`)."""
    text = os.fspath(path)
    local = Path(text)
    return text.startswith(HF_URL) or (
        (local / SAELENS_CONFIG).is_file() and (local / SAELENS_WEIGHTS).is_file()
    )


def describe_pretrained(path_or_url: str | os.PathLike, **hub: Any) -> str:
    """What a pretrained SAE is, in words (`sae-hooks inspect hf://org/name/subfolder`):
    the SAE as loaded (same checks), its file layout and the identity it records."""
    where = local_sae_dir(path_or_url, **hub)
    sae = load_pretrained(where)
    layout = "SAELens" if not (where / CONFIG_FILE).is_file() else "sae-hooks"
    numbers = sum(t.numel() for t in sae.state_dict().values())
    lines = [
        f"pretrained SAE {os.fspath(path_or_url)}"
        + (f" (files at {where})" if os.fspath(path_or_url) != str(where) else ""),
        f"  {type(sae).__name__}: {sae.nb_concepts:,} latents over {sae.input_size} "
        f"dimensions, {numbers:,} numbers, {layout} layout",
    ]
    identity = pretrained_metadata(where).get("identity") or {}
    for key, label in _IDENTITY_LINES:
        value = identity.get(key)
        lines.append(f"  {label}: {'not recorded' if value is None else value}")
    return "\n".join(lines)


def push_to_hub(
    sae: SAE,
    repo_id: str,
    *,
    point: str | None = None,
    model_name: str | None = None,
    identity: RunIdentity | None = None,
    private: bool = False,
    token: str | None = None,
    commit_message: str = "Upload SAE with sae-hooks",
) -> Any:
    """Create `repo_id` if needed and upload `sae` in the Hub layout; returns the commit info."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    with tempfile.TemporaryDirectory(prefix="sae-hooks-push-") as tmp:
        save_pretrained(
            sae, tmp, point=point, model_name=model_name, repo_id=repo_id, identity=identity
        )
        return api.upload_folder(
            folder_path=tmp, repo_id=repo_id, repo_type="model", commit_message=commit_message
        )
