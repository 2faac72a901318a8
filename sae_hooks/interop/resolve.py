"""Where a pretrained SAE lives, as a local directory: a local path as it is, or a Hugging
Face Hub repo ("org/name", or a URL "hf://org/name[@revision]/subfolder") resolved through
huggingface_hub's cache, which downloads when online and reads the cache alone with
HF_HUB_OFFLINE=1 (or when the Hub cannot be reached).

Only the files an SAE directory is read from are fetched (either layout, in the
subfolder if one is given), never a whole repo of SAEs.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from sae_hooks.sae.saving import CONFIG_FILE, WEIGHTS_FILE

from .saelens_config import ACTIVATION_SCALER, SAELENS_CONFIG, SAELENS_WEIGHTS

HF_URL = "hf://"
METADATA_FILE = "sae_hooks.json"
SAE_FILES = (
    CONFIG_FILE,
    WEIGHTS_FILE,
    METADATA_FILE,
    "README.md",
    SAELENS_CONFIG,
    SAELENS_WEIGHTS,
    ACTIVATION_SCALER,
)
_PART = r"[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9_])?"
_REPO_ID = re.compile(rf"{_PART}/{_PART}")


@dataclass(frozen=True)
class HubLocation:
    """A repo on the Hub, a revision (None: main) and a folder inside it (None: its root)."""

    repo_id: str
    revision: str | None = None
    subfolder: str | None = None

    def url(self) -> str:
        rev = f"@{self.revision}" if self.revision else ""
        return f"{HF_URL}{self.repo_id}{rev}" + (f"/{self.subfolder}" if self.subfolder else "")


def is_hub_id(name: str | os.PathLike) -> bool:
    """ "org/name" that is not an existing local path (a relative path that exists wins)."""
    text = os.fspath(name)
    return bool(_REPO_ID.fullmatch(text)) and ".." not in text and not Path(text).exists()


def parse_hf_url(url: str) -> HubLocation:
    """hf://org/name[@revision][/subfolder/...] -> HubLocation."""
    if not url.startswith(HF_URL):
        raise ValueError(f"{url!r} is not a hf:// URL (hf://org/name[@revision]/subfolder)")
    parts = url[len(HF_URL) :].strip("/").split("/")
    if len(parts) < 2:
        raise ValueError(f"{url!r} names no repo: expected hf://org/name[@revision]/subfolder")
    name, _, revision = parts[1].partition("@")
    repo_id = f"{parts[0]}/{name}"
    if not _REPO_ID.fullmatch(repo_id) or "@" in revision:
        raise ValueError(f"{url!r}: {repo_id!r} is not a Hub repo id ('org/name')")
    return HubLocation(repo_id, revision or None, checked_subfolder("/".join(parts[2:])) or None)


def checked_subfolder(subfolder: str | None) -> str | None:
    """A folder inside a repo: relative, without '..' (nothing outside the snapshot)."""
    if not subfolder:
        return None
    pure = PurePosixPath(subfolder.replace("\\", "/"))
    if pure.is_absolute() or ".." in pure.parts or subfolder.startswith("~"):
        raise ValueError(f"subfolder {subfolder!r} must be a relative path inside the repo")
    return pure.as_posix().strip("/") or None


def local_sae_dir(
    where: str | os.PathLike,
    *,
    subfolder: str | None = None,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    token: str | None = None,
) -> Path:
    """The local directory holding the SAE at `where` (a path, a hub id or a hf:// URL)."""
    text = os.fspath(where)
    if text.startswith(HF_URL):
        hub = parse_hf_url(text)
        inner = checked_subfolder(subfolder)
        sub = "/".join(p for p in (hub.subfolder, inner) if p) or None
        return download(HubLocation(hub.repo_id, revision or hub.revision, sub), cache_dir, token)
    local = Path(text).expanduser()
    sub = checked_subfolder(subfolder)
    if local.exists() or not is_hub_id(text):
        return local / sub if sub else local
    return download(HubLocation(text, revision, sub), cache_dir, token)


def download(
    hub: HubLocation, cache_dir: str | os.PathLike | None = None, token: str | None = None
) -> Path:
    """The SAE files of `hub` in the local Hugging Face cache (fetched if online)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    prefix = f"{hub.subfolder}/" if hub.subfolder else ""
    try:
        root = snapshot_download(
            hub.repo_id,
            revision=hub.revision,
            allow_patterns=[prefix + name for name in SAE_FILES],
            cache_dir=cache_dir,
            token=token,
        )
    except LocalEntryNotFoundError:
        raise FileNotFoundError(
            f"no local SAE directory {hub.repo_id!r}, and the Hugging Face cache has no "
            f"snapshot of that repo{_at(hub)} (offline, or HF_HUB_OFFLINE=1: download it "
            "once online, or set HF_HUB_CACHE to the cache that holds it)"
        ) from None
    except (RepositoryNotFoundError, RevisionNotFoundError) as err:
        raise FileNotFoundError(
            f"no local SAE directory {hub.repo_id!r}, and the Hugging Face Hub has no such "
            f"repo{_at(hub)}: {type(err).__name__}"
        ) from None
    except HfHubHTTPError as err:
        raise OSError(f"the Hugging Face Hub refused {hub.repo_id}: {err}") from None
    path = Path(root) / hub.subfolder if hub.subfolder else Path(root)
    if not path.is_dir():
        found = {p.parent.relative_to(root).as_posix() for p in Path(root).glob("**/*.json")}
        found = sorted(found - {"."})
        hint = f"; folders with SAE files: {', '.join(found)}" if found else ""
        raise FileNotFoundError(f"{hub.url()} has no folder {hub.subfolder!r}{hint}")
    return path


def _at(hub: HubLocation) -> str:
    return f" at revision {hub.revision!r}" if hub.revision else ""
