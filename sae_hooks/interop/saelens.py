"""SAELens (6.x) on-disk format: a directory with cfg.json and sae_weights.safetensors.

Weights: W_enc (d_in, d_sae), b_enc (d_sae), W_dec (d_sae, d_in), b_dec (d_in), plus
threshold (d_sae) for "jumprelu". SAELens computes
    pre = (x - b_dec * apply_b_dec_to_input) @ W_enc + b_enc,   x_hat = acts @ W_dec + b_dec
with acts = ReLU(pre) ("standard"), TopK(pre, k) ("topk") or ReLU(pre) * (pre > threshold)
("jumprelu"). SAELens saves a trained BatchTopK SAE as "jumprelu" with its running
threshold broadcast to every latent; export does the same. Our input_scale is folded
into the weights (W_enc * s, W_dec / s, b_dec / s) so the files run on raw activations,
and our own config rides along under the "sae_hooks" key (SAELens ignores unknown
keys), so that import restores the exact variant and its input_scale.

Where the activations come from: export writes SAELens's metadata (model_name,
hook_name, context_size, prepend_bos, dataset_path, model_from_pretrained_kwargs; the
same keys at the top level, which SAELens reads from a cfg.json that names no
sae_lens_version) from a `RunIdentity`, null where the run did not record a value
(SAELens would otherwise assume prepend_bos=True); the whole identity rides under
"sae_hooks". `saelens_metadata` reads it back, hook_name mapped to our vocabulary.

A transcoder's output point (the identity's target_point) is written as hook_name_out.

Import reads SAELens inference SAEs and its BatchTopK / Matryoshka BatchTopK training
checkpoints (cfg.json and header checked first: sae_hooks.interop.saelens_config).
`rescale_acts_by_decoder_norm: true` computes acts = act(n * pre) and decodes acts / n
with n = |W_dec rows|; import folds it (W_enc and b_enc times n, W_dec rows over n),
which leaves codes and outputs equal.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from pathlib import Path
from typing import Any

import torch

from sae_hooks.atomic import OutputKind, rebuilt_dir
from sae_hooks.hooks.points import point_from_hook_name
from sae_hooks.jsonio import loads
from sae_hooks.sae.base import SAE, SAE_REGISTRY
from sae_hooks.sae.batchtopk import BatchTopKSAE
from sae_hooks.sae.encoders import LinearEncoder
from sae_hooks.sae.jump import JumpSAE
from sae_hooks.sae.matryoshka import MatryoshkaBatchTopKSAE
from sae_hooks.sae.persistence import check_values
from sae_hooks.sae.topk import TopKSAE

from .identity import RunIdentity
from .saelens_config import (
    SAELENS_ARCHITECTURES,
    SAELENS_CONFIG,
    SAELENS_WEIGHTS,
    SaelensFile,
    open_saelens,
    read_saelens_config,
    read_saelens_tensors,
)

__all__ = [
    "SAELENS_ARCHITECTURES",
    "SAELENS_CONFIG",
    "SAELENS_WEIGHTS",
    "export_saelens",
    "import_saelens",
    "saelens_metadata",
]

_UNIT_NORM_TOL = 1e-5
_SAELENS_IDENTITY = ("model_name", "context_size", "prepend_bos", "dataset_path")
_SAELENS_NAME = {
    "relu": "standard",
    "topk": "topk",
    "jumprelu": "jumprelu",
    "batchtopk": "jumprelu",
    "matryoshka_batchtopk": "jumprelu",  # SAELens saves its trained Matryoshka as JumpReLU too
}


@torch.no_grad()
def export_saelens(
    sae: SAE,
    path: str | os.PathLike,
    *,
    point: str | None = None,
    model_name: str | None = None,
    hook_name: str | None = None,
    identity: RunIdentity | None = None,
) -> Path:
    """Write `sae` as an SAELens inference SAE; returns the directory.

    The directory is built beside `path` and swapped in whole (sae_hooks.atomic); an
    existing `path` that is not an SAELens export of ours is refused (FileExistsError).

    identity (see `identity_from_run`) says where SAELens should hook it and what the
    activations were computed from; point (ours, e.g. "resid_post.6") and model_name
    fill it in (they must agree with it), hook_name overrides the TransformerLens name."""
    from safetensors.torch import save_file

    identity = (identity or RunIdentity()).with_values(point=point, model_name=model_name)
    tensors, cfg = _saelens_weights(sae)
    _add_location(cfg, identity, hook_name)
    try:
        ours = {"config": sae.config(), "input_scale": float(sae.input_scale)}
    except ValueError:  # a custom normalisation: SAELens still gets exact weights
        ours = {}
    if identity.point:
        ours["point"] = identity.point
    cfg["sae_hooks"] = {**ours, "identity": identity.to_dict()}
    with rebuilt_dir(path, EXPORT_KIND) as folder:
        weights = {k: v.detach().contiguous() for k, v in tensors.items()}
        save_file(weights, folder / SAELENS_WEIGHTS)
        (folder / SAELENS_CONFIG).write_text(json.dumps(cfg, indent=2) + "\n")
    return Path(path)


def _is_export(folder: Path) -> bool:
    try:
        return "sae_hooks" in loads((folder / SAELENS_CONFIG).read_text())
    except (OSError, ValueError, TypeError):
        return False


EXPORT_KIND = OutputKind("SAELens export", frozenset({SAELENS_CONFIG, SAELENS_WEIGHTS}), _is_export)
"""An existing export folder is replaced whole (sae_hooks.atomic); any other is refused."""


def _saelens_weights(sae: SAE) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """SAELens's tensors (input_scale folded in) and the cfg.json keys they imply."""
    if not isinstance(sae.encoder, LinearEncoder):
        raise ValueError(
            f"SAELens SAEs have a linear encoder; this one is {type(sae.encoder).__name__}"
        )
    scale = sae.input_scale
    atoms = sae.get_dictionary()
    nb, d = atoms.shape
    b_dec = sae.dictionary.bias if sae.dictionary.bias is not None else atoms.new_zeros(d)
    tensors = {
        "W_enc": (sae.encoder.weight * scale).T,
        "b_enc": sae.encoder.bias,
        "W_dec": atoms / scale,
        "b_dec": b_dec / scale,
    }
    cfg = _saelens_architecture(sae, tensors, nb, atoms.dtype)
    cfg.update(
        d_in=d,
        d_sae=nb,
        dtype=str(atoms.dtype).removeprefix("torch."),
        device="cpu",
        apply_b_dec_to_input=True,
        normalize_activations="none",
        reshape_activations="none",
    )
    if getattr(sae, "paired", False):
        _as_transcoder(sae, tensors, cfg)
    return tensors, cfg


_SAELENS_TRANSCODERS = {"standard": "transcoder", "jumprelu": "jumprelu_transcoder"}
"""SAELens 6's transcoders by the codes they use; each has a skip_ version."""


def _as_transcoder(sae: SAE, tensors: dict[str, torch.Tensor], cfg: dict[str, Any]) -> None:
    """A transcoder's SAELens layout: W_dec (d_sae, d_out), b_dec (d_out) and W_skip
    (d_out, d_in) in the raw output's scale (over s r), d_out, no b_dec on the input.
    BatchTopK ones go as JumpReLU (their running threshold), as BatchTopK SAEs do."""
    arch = _SAELENS_TRANSCODERS.get(cfg["architecture"])
    if arch is None:
        raise ValueError(
            f"SAELens has no {cfg['architecture']!r} transcoder for {type(sae).__name__}: "
            f"its transcoders are {sorted(_SAELENS_TRANSCODERS.values())} and their skip versions"
        )
    r = sae.output_scale
    tensors["W_dec"], tensors["b_dec"] = tensors["W_dec"] / r, tensors["b_dec"] / r
    if sae.skip_connection:
        tensors["W_skip"] = sae.W_skip / r  # (W_skip x s) / (s r)
        arch = arch.replace("transcoder", "skip_transcoder")
    cfg.update(architecture=arch, d_in=sae.input_size, d_out=sae.output_size)
    cfg["apply_b_dec_to_input"] = False


def _saelens_architecture(
    sae: SAE, tensors: dict[str, torch.Tensor], nb: int, dtype: torch.dtype
) -> dict[str, Any]:
    """SAELens's architecture keys for `sae`; adds the threshold tensor a JumpReLU needs."""
    cfg: dict[str, Any] = {}
    if isinstance(sae, BatchTopKSAE):
        if sae.running_threshold is None:
            raise ValueError("a BatchTopKSAE exports with its running threshold; train it first")
        cfg["architecture"] = "jumprelu"
        tensors["threshold"] = sae.running_threshold.to(dtype).expand(nb)
    elif isinstance(sae, JumpSAE):
        cfg["architecture"] = "jumprelu"
        tensors["threshold"] = sae.threshold
    elif isinstance(sae, TopKSAE):
        cfg.update(architecture="topk", k=sae.top_k)
    elif type(sae) is SAE or sae.architecture in ("transcoder", "skip_transcoder"):
        cfg["architecture"] = "standard"
    else:
        raise ValueError(f"no SAELens architecture for {type(sae).__name__}")
    return cfg


def _add_location(cfg: dict[str, Any], identity: RunIdentity, hook_name: str | None) -> None:
    """SAELens's metadata: in `metadata` (SAELens 6) and at the top level, which is what
    SAELens reads from a cfg.json without sae_lens_version. Unknown values are written as
    null so that SAELens's own defaults (prepend_bos=True) do not stand in for them."""
    kwargs = {"revision": identity.model_revision} if identity.model_revision else {}
    if identity.backend == "transformers":  # raw residuals: TransformerLens must not centre
        kwargs["center_writing_weights"] = False
    meta = {
        "model_name": identity.model_name,
        "hook_name": hook_name or identity.hook_name,
        "hook_head_index": None,
        "context_size": identity.context_size,
        "prepend_bos": identity.prepend_bos,
        "dataset_path": identity.dataset_path,
        "model_from_pretrained_kwargs": kwargs or None,
    }
    if identity.target_point:  # a transcoder: the output it predicts
        meta["hook_name_out"] = identity.hook_name_out
    cfg["metadata"] = meta
    # SAELens < 6 parsing tests `"hook_z" in hook_name`: never a null hook_name up there.
    cfg.update({k: v for k, v in meta.items() if v is not None or k != "hook_name"})


@torch.no_grad()
def import_saelens(path: str | os.PathLike, device: str | torch.device = "cpu") -> SAE:
    """Read an SAELens directory (cfg.json + sae_weights.safetensors) into one of our SAEs.

    cfg.json and the weights' header are checked against each other first; the SAE is
    built only from sizes the file holds, and its final weights are checked as
    `load_sae` checks ours (finite, positive input_scale)."""
    file = open_saelens(path)
    ours = _our_config(file)  # an SAE exported by sae-hooks: its exact variant
    tensors = read_saelens_tensors(file, device)
    w_enc, b_enc, w_dec, b_dec = (tensors[n] for n in ("W_enc", "b_enc", "W_dec", "b_dec"))
    if file.cfg.get("rescale_acts_by_decoder_norm"):
        w_enc, b_enc, w_dec = _fold_decoder_norm(w_enc, b_enc, w_dec)
    if not file.cfg.get("apply_b_dec_to_input", True):
        b_enc = b_enc + b_dec @ w_enc  # we always centre the encoder's input on b_dec
    threshold = tensors.get("threshold")
    if ours is not None:
        config, unfold = ours
        sae = SAE_REGISTRY[config["architecture"]].from_config(config, device=device)
        input_scale = unfold
    else:
        sae, unfold = _foreign_sae(file, w_dec, device), 1.0
        input_scale = file.scaling_factor or 1.0
    state = {
        "encoder.weight": w_enc.T / unfold,
        "encoder.bias": b_enc,
        "dictionary.weight": w_dec * unfold,
        "input_scale": torch.tensor(input_scale, dtype=w_dec.dtype, device=w_dec.device),
    }
    if sae.dictionary.bias is not None:
        state["dictionary.bias"] = b_dec * unfold
    elif b_dec.abs().max() > 0:
        raise ValueError("the SAE config has no decoder bias but b_dec is non-zero")
    if isinstance(sae, JumpSAE):
        state["log_threshold"] = _positive(threshold).log()
    if isinstance(sae, BatchTopKSAE):
        state.update(_batchtopk_state(tensors, threshold, w_dec))
    for key, value in sae.state_dict().items():
        state.setdefault(key, value)  # e.g. buffers SAELens has no notion of
    state = {
        k: v.contiguous().to(w_dec.dtype) if v.is_floating_point() else v for k, v in state.items()
    }
    check_values(state, file.weights)  # e.g. an input_scale of 1e308 folded into float32
    sae.load_weights(state)
    return sae.eval()  # inference is never silently in train mode (BatchTopK: batch top-k)


def _our_config(file: SaelensFile) -> tuple[dict[str, Any], float] | None:
    """(our config, input_scale) of a file sae-hooks exported, checked against the file's
    sizes on the meta device (nothing allocated); None for a file SAELens wrote."""
    ours = file.cfg.get("sae_hooks")
    if not isinstance(ours, dict) or not isinstance(ours.get("config"), dict):
        return None
    config = ours["config"]
    arch = config.get("architecture")
    if _SAELENS_NAME.get(arch) != file.arch:
        raise ValueError(
            f"cfg.json is inconsistent: SAELens architecture {file.arch!r} but sae_hooks "
            f"architecture {arch!r}"
        )
    skeleton = SAE_REGISTRY[arch].from_config(config, device="meta")
    if (skeleton.input_size, skeleton.nb_concepts) != (file.d_in, file.d_sae):
        raise ValueError(
            f"cfg.json's sae_hooks config is for {skeleton.nb_concepts} latents over "
            f"{skeleton.input_size} dimensions, but the weights have {file.d_sae} over {file.d_in}"
        )
    if not isinstance(skeleton.encoder, LinearEncoder):
        raise ValueError("an SAELens SAE needs the default linear encoder")
    scale = ours.get("input_scale", 1.0)
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not 0 < scale < math.inf:
        raise ValueError(
            f"cfg.json's sae_hooks input_scale must be a positive number, got {scale!r}"
        )
    return config, float(scale)


def _fold_decoder_norm(
    w_enc: torch.Tensor, b_enc: torch.Tensor, w_dec: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """rescale_acts_by_decoder_norm folded into the weights: same codes, same outputs."""
    norm = w_dec.norm(dim=-1)
    if bool((norm == 0).any()) or not bool(torch.isfinite(norm).all()):
        bad = int(((norm == 0) | ~torch.isfinite(norm)).sum())
        raise ValueError(
            f"rescale_acts_by_decoder_norm: {bad} W_dec rows have norm 0 or non-finite; "
            "their codes are undefined and cannot be folded"
        )
    return w_enc * norm, b_enc * norm, w_dec / norm[:, None]


def saelens_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """model_name, hook_name and our hook point (hook_name mapped to e.g. resid_post.6,
    valid on Hugging Face and TransformerLens models alike) of an SAELens directory, plus
    "identity": everything the export recorded (a `RunIdentity` as a dict)."""
    cfg, _ = read_saelens_config(Path(path))
    meta = cfg.get("metadata") if isinstance(cfg.get("metadata"), dict) else {}
    hook = meta.get("hook_name") or cfg.get("hook_name")
    ours = cfg.get("sae_hooks") if isinstance(cfg.get("sae_hooks"), dict) else {}
    point = ours.get("point") or (point_from_hook_name(hook) or hook if hook else None)
    recorded = ours.get("identity")
    if not isinstance(recorded, dict):  # a file SAELens wrote: its own metadata keys
        recorded = {**{k: cfg[k] for k in _SAELENS_IDENTITY if k in cfg}, **meta, "point": point}
    identity = RunIdentity.from_dict(recorded)
    return {
        "model_name": meta.get("model_name") or cfg.get("model_name"),
        "hook_name": hook,
        "point": point,
        "identity": identity.to_dict(),
    }


def _foreign_sae(file: SaelensFile, w_dec: torch.Tensor, device: str | torch.device) -> SAE:
    """An SAE for a file SAELens wrote: 'l2' atoms if W_dec rows are unit norm, else 'identity'."""
    d, nb = file.d_in, file.d_sae
    unit = bool(((w_dec.norm(dim=-1) - 1).abs() <= _UNIT_NORM_TOL).all())
    params = {"normalization": "l2" if unit else "identity"}
    if file.arch == "standard":
        return SAE(d, nb, dictionary_params=params, device=device)
    if file.arch == "topk":
        return TopKSAE(d, nb, top_k=file.k, dictionary_params=params, device=device)
    if file.arch == "jumprelu":
        return JumpSAE(d, nb, dictionary_params=params, device=device)
    if file.arch == "matryoshka_batchtopk":
        return MatryoshkaBatchTopKSAE(
            d,
            nb,
            top_k_per_sample=file.k,
            group_sizes=file.group_sizes,
            dictionary_params=params,
            device=device,
        )
    return BatchTopKSAE(d, nb, top_k_per_sample=file.k, dictionary_params=params, device=device)


def _positive(threshold: torch.Tensor) -> torch.Tensor:
    tiny = torch.finfo(threshold.dtype).tiny
    if bool((threshold <= 0).any()):
        warnings.warn(
            "JumpReLU thresholds <= 0 raised to the smallest positive float (JumpSAE stores "
            "log thresholds)",
            stacklevel=3,
        )
    return threshold.clamp_min(tiny)


def _batchtopk_state(
    tensors: dict[str, torch.Tensor], threshold: torch.Tensor | None, ref: torch.Tensor
) -> dict[str, torch.Tensor]:
    if threshold is None:
        threshold = tensors.get("topk_threshold")
    if threshold is None:
        return {}
    flat = threshold.reshape(-1).to(ref.dtype)
    if not bool((flat == flat[0]).all()):
        raise ValueError("a BatchTopK SAE needs one threshold shared by every latent")
    value = flat[0]
    if not math.isfinite(float(value)):
        raise ValueError(f"BatchTopK threshold must be finite, got {float(value)}")
    return {
        "threshold_ema": value.reshape(()),
        "threshold_initialized": torch.ones((), dtype=torch.bool, device=ref.device),
    }
