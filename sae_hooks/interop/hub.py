"""SAEs on the Hugging Face Hub: save_pretrained, from_pretrained, push_to_hub.

A pretrained SAE directory follows the Hub's convention for PyTorch models:

    config.json          the SAE's config (as SAE.save writes it; load_sae reads it)
    model.safetensors    its weights (no pickle)
    sae_hooks.json       where it reads activations: {"point", "hook_name", "model_name",
                         "library": "sae-hooks", "version"}
    README.md            a model card whose front matter tags the library

`from_pretrained` takes a local directory or a Hub repo id (optionally a revision and a
subfolder) and reads either this layout or SAELens's (cfg.json +
sae_weights.safetensors). Hub calls go through huggingface_hub and need the network
(or its cache); nothing else here does.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from sae_hooks.sae import SAE, load_sae

from .saelens import SAELENS_CONFIG, import_saelens, saelens_metadata

METADATA_FILE = "sae_hooks.json"
_CARD = """---
library_name: sae-hooks
tags:
- sparse-autoencoder
- sae-hooks
---

# {title}

A {kind} sparse autoencoder ({nb:,} latents over {d} dimensions) trained with
[sae-hooks](https://pypi.org/project/sae-hooks/){where}.

```python
from sae_hooks.interop.hub import from_pretrained
sae = from_pretrained("{repo}")
```
"""


def save_pretrained(
    sae: SAE,
    path: str | os.PathLike,
    *,
    point: str | None = None,
    model_name: str | None = None,
    repo_id: str | None = None,
) -> Path:
    """Write `sae` in the Hub layout (config.json, model.safetensors, sae_hooks.json, README.md)."""
    from sae_hooks import __version__
    from sae_hooks.hooks.points import hook_name_of_point

    path = sae.save(path)
    meta = {
        "library": "sae-hooks",
        "version": __version__,
        "point": point,
        "hook_name": hook_name_of_point(point) if point else None,
        "model_name": model_name,
    }
    (path / METADATA_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    where = f" on {model_name}" if model_name else ""
    where += f" at `{point}`" if point else ""
    card = _CARD.format(
        title=repo_id or path.name,
        kind=type(sae).__name__,
        nb=sae.nb_concepts,
        d=sae.input_size,
        where=where,
        repo=repo_id or str(path),
    )
    (path / "README.md").write_text(card)
    return path


def pretrained_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """point / hook_name / model_name of a local pretrained directory (either layout)."""
    path = Path(path)
    if (path / METADATA_FILE).is_file():
        return json.loads((path / METADATA_FILE).read_text())
    if (path / SAELENS_CONFIG).is_file():
        return saelens_metadata(path)
    return {}


def from_pretrained(
    path_or_repo: str | os.PathLike,
    *,
    revision: str | None = None,
    subfolder: str | None = None,
    device: str | torch.device = "cpu",
    cache_dir: str | os.PathLike | None = None,
    token: str | None = None,
) -> SAE:
    """An SAE from a local directory or a Hub repo id ("user/name"), ours or SAELens's."""
    local = Path(path_or_repo).expanduser()
    if subfolder:
        local = local / subfolder
    if not local.is_dir():
        local = _download(str(path_or_repo), revision, subfolder, cache_dir, token)
    if (local / SAELENS_CONFIG).is_file() and not (local / "model.safetensors").is_file():
        return import_saelens(local, device=device)
    return load_sae(local, device=device).eval()


def _download(
    repo_id: str,
    revision: str | None,
    subfolder: str | None,
    cache_dir: str | os.PathLike | None,
    token: str | None,
) -> Path:
    if repo_id.count("/") != 1 or repo_id.startswith(("/", ".", "~")):
        raise FileNotFoundError(
            f"no SAE directory at {repo_id}, and it is not a Hub repo id ('user/name')"
        )
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    patterns = [f"{subfolder}/*" if subfolder else "*"]
    try:
        root = snapshot_download(
            repo_id,
            revision=revision,
            allow_patterns=patterns,
            cache_dir=cache_dir,
            token=token,
        )
    except LocalEntryNotFoundError as err:
        raise OSError(
            f"cannot download {repo_id} from the Hugging Face Hub and it is not in the "
            f"cache (offline?): {err}"
        ) from None
    except HfHubHTTPError as err:
        raise OSError(f"the Hugging Face Hub refused {repo_id}: {err}") from None
    path = Path(root) / subfolder if subfolder else Path(root)
    if not path.is_dir():
        raise FileNotFoundError(f"{repo_id} has no folder {subfolder!r}")
    return path


def push_to_hub(
    sae: SAE,
    repo_id: str,
    *,
    point: str | None = None,
    model_name: str | None = None,
    private: bool = False,
    token: str | None = None,
    commit_message: str = "Upload SAE with sae-hooks",
) -> Any:
    """Create `repo_id` if needed and upload `sae` in the Hub layout; returns the commit info."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    with tempfile.TemporaryDirectory(prefix="sae-hooks-push-") as tmp:
        save_pretrained(sae, tmp, point=point, model_name=model_name, repo_id=repo_id)
        return api.upload_folder(
            folder_path=tmp, repo_id=repo_id, repo_type="model", commit_message=commit_message
        )
