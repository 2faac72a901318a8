"""Put a local folder into the Hugging Face caches as if it came from the hub, offline.

`save_to_hub_cache(obj_dir, repo_id, cache_dir, repo_type)` writes the hub cache's own
layout, what a first online download leaves behind and what huggingface_hub reads with
HF_HUB_OFFLINE=1 (transformers' from_pretrained, hf_hub_download, snapshot_download):

    <cache_dir>/<models|datasets>--<org>--<name>/
        refs/main                      the snapshot's commit hash
        blobs/<sha256>                 each file's bytes
        snapshots/<commit>/<path>      a symlink to its blob (a copy where links fail)

Datasets are read differently offline. `datasets.load_dataset("org/name")` with
HF_HUB_OFFLINE=1 never opens the hub snapshot: it falls back to the datasets cache
(HF_DATASETS_CACHE), where a first online use left the prepared Arrow files under
`<org>___<name>/<config>/<version>/<hash>/` (datasets.load.CachedDatasetModuleFactory
and datasets.packaged_modules.cache). For repo_type="dataset" the data files in
`obj_dir` (.parquet, .csv, .json, .jsonl, .txt, split by datasets' own file-name
patterns: train-*.parquet, data/test.csv, ...) are therefore also prepared there, with
the Parquet/CSV/JSON builder that a hub load of that repo would use, config "default".
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

_KINDS = {"model": "models", "dataset": "datasets", "space": "spaces"}
_BUILDERS = {
    ".parquet": "parquet",
    ".csv": "csv",
    ".json": "json",
    ".jsonl": "json",
    ".txt": "text",
}


def save_to_hub_cache(
    obj_dir: str | os.PathLike,
    repo_id: str,
    cache_dir: str | os.PathLike,
    repo_type: str = "model",
    *,
    datasets_cache: str | os.PathLike | None = None,
) -> Path:
    """Copy every file of `obj_dir` into the hub cache `cache_dir` (HF_HUB_CACHE) as
    `repo_id`'s main revision; the snapshot folder. For a dataset, also prepare it in
    `datasets_cache` (default: a `datasets` folder beside `cache_dir`, which is where
    HF_HOME/hub and HF_HOME/datasets sit)."""
    if repo_type not in _KINDS:
        raise ValueError(f"repo_type must be one of {', '.join(_KINDS)}, got {repo_type!r}")
    src = Path(obj_dir)
    files = sorted(p for p in src.rglob("*") if p.is_file())
    if not files:
        raise ValueError(f"{src} holds no files")
    digest = hashlib.sha1()
    for f in files:
        digest.update(f.relative_to(src).as_posix().encode() + b"\0" + f.read_bytes())
    commit = digest.hexdigest()
    repo = Path(cache_dir) / f"{_KINDS[repo_type]}--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / commit
    for f in files:
        _link_blob(f, repo / "blobs", snapshot / f.relative_to(src))
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    if repo_type == "dataset":
        where = datasets_cache or Path(cache_dir).parent / "datasets"
        prepare_in_datasets_cache(snapshot, repo_id, where, commit)
    return snapshot


def _link_blob(file: Path, blobs: Path, target: Path) -> None:
    data = file.read_bytes()
    blob = blobs / hashlib.sha256(data).hexdigest()
    blobs.mkdir(parents=True, exist_ok=True)
    if not blob.exists():
        blob.write_bytes(data)
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists() or target.is_symlink():
        target.unlink()
    try:
        target.symlink_to(os.path.relpath(blob, target.parent))
    except OSError:  # no symlinks here (Windows without developer mode): huggingface_hub copies
        shutil.copyfile(blob, target)


def prepare_in_datasets_cache(
    data_dir: str | os.PathLike, repo_id: str, datasets_cache: str | os.PathLike, commit: str
) -> Path:
    """Prepare the data files of `data_dir` in the datasets cache as `repo_id` (config
    "default", the hash `commit`), where an offline load_dataset(repo_id) finds them.
    The builder writes into a scratch folder named after the dataset; it is moved to
    `<org>___<name>`, the folder a builder given the hub repo_id would have written."""
    from datasets.data_files import DataFilesDict, get_data_patterns
    from datasets.load import import_main_class
    from datasets.packaged_modules import _PACKAGED_DATASETS_MODULES

    base = str(Path(data_dir).resolve())
    data_files = DataFilesDict.from_patterns(get_data_patterns(base), base_path=base)
    suffixes = {Path(f).suffix.lower() for files in data_files.values() for f in files}
    kinds = {_BUILDERS.get(s) for s in suffixes}
    if len(kinds) != 1 or None in kinds:
        raise ValueError(f"{data_dir}: need data files of one kind, got {sorted(suffixes)}")
    module_path, _ = _PACKAGED_DATASETS_MODULES[kinds.pop()]
    builder_cls = import_main_class(module_path)
    namespace, _, name = repo_id.rpartition("/")
    Path(datasets_cache).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=datasets_cache) as tmp:
        builder = builder_cls(
            cache_dir=tmp,
            dataset_name=name,
            config_id="default",
            hash=commit,
            data_files=data_files,
        )
        builder.download_and_prepare()
        made = Path(tmp) / builder.dataset_name / "default"
        folder = f"{namespace}___{builder.dataset_name}" if namespace else builder.dataset_name
        final = Path(datasets_cache) / folder
        final.mkdir(parents=True, exist_ok=True)
        if (final / "default").exists():
            shutil.rmtree(final / "default")
        shutil.move(str(made), str(final / "default"))
    return final
