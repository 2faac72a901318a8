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

Where the activations come from: export writes SAELens's `metadata.hook_name` /
`metadata.model_name` (and the same keys at the top level, for SAELens < 6) from our
hook point (`resid_post.6` -> `blocks.6.hook_resid_post`); `saelens_metadata` reads
them back, mapped to our vocabulary (which also resolves on Hugging Face models).
`rescale_acts_by_decoder_norm: true` (SAELens's default for TopK/BatchTopK training)
computes acts = act(n * pre) and decodes acts / n with n = |W_dec rows|; import folds
it (W_enc and b_enc times n, W_dec rows over n), which leaves codes and outputs equal.
Settings with no equivalent here are refused by name (hook_head_index,
reshape_activations, normalize_activations).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import warnings
from pathlib import Path
from typing import Any

import torch

from sae_hooks.hooks.points import hook_name_of_point, point_from_hook_name
from sae_hooks.sae.base import SAE, SAE_REGISTRY
from sae_hooks.sae.batchtopk import BatchTopKSAE
from sae_hooks.sae.encoders import LinearEncoder
from sae_hooks.sae.jump import JumpSAE
from sae_hooks.sae.persistence import read_safetensors
from sae_hooks.sae.topk import TopKSAE

SAELENS_CONFIG = "cfg.json"
SAELENS_WEIGHTS = "sae_weights.safetensors"
SAELENS_ARCHITECTURES = ("standard", "topk", "jumprelu", "batchtopk")
_UNIT_NORM_TOL = 1e-5
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
) -> Path:
    """Write `sae` as an SAELens inference SAE; returns the directory.

    point (ours, e.g. "resid_post.6") or hook_name (SAELens's, e.g.
    "blocks.6.hook_resid_post") and model_name say where SAELens should hook it."""
    from safetensors.torch import save_file

    tensors, cfg = _saelens_weights(sae)
    _add_location(cfg, point, model_name, hook_name)
    with contextlib.suppress(
        ValueError
    ):  # a custom normalisation: SAELens still gets exact weights
        cfg["sae_hooks"] = {"config": sae.config(), "input_scale": float(sae.input_scale)}
        if point:
            cfg["sae_hooks"]["point"] = point
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous() for k, v in tensors.items()}, path / SAELENS_WEIGHTS)
    (path / SAELENS_CONFIG).write_text(json.dumps(cfg, indent=2) + "\n")
    return path


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


def _add_location(
    cfg: dict[str, Any], point: str | None, model_name: str | None, hook_name: str | None
) -> None:
    """Where SAELens hooks the SAE: metadata (SAELens 6) and the top level (SAELens < 6)."""
    hook_name = hook_name or (hook_name_of_point(point) or point if point else None)
    if hook_name or model_name:
        where = {"hook_name": hook_name, "model_name": model_name, "hook_head_index": None}
        cfg["metadata"] = {k: v for k, v in where.items() if v is not None}
        cfg.update(cfg["metadata"])  # SAELens < 6 read them at the top level


@torch.no_grad()
def import_saelens(path: str | os.PathLike, device: str | torch.device = "cpu") -> SAE:
    """Read an SAELens directory (cfg.json + sae_weights.safetensors) into one of our SAEs."""
    path = Path(path)
    cfg, arch = _read_saelens_config(path)
    tensors = read_safetensors(path / SAELENS_WEIGHTS, device)
    w_enc, b_enc, w_dec, b_dec = _required(tensors, arch)
    nb, d = w_dec.shape
    if w_enc.shape != (d, nb) or b_enc.shape != (nb,) or b_dec.shape != (d,):
        raise ValueError(
            f"inconsistent SAELens weights: W_enc {tuple(w_enc.shape)}, b_enc {tuple(b_enc.shape)}, "
            f"W_dec {tuple(w_dec.shape)}, b_dec {tuple(b_dec.shape)}"
        )
    for key, size in (("d_in", d), ("d_sae", nb)):
        if key in cfg and cfg[key] != size:
            raise ValueError(f"cfg.json says {key}={cfg[key]} but the weights have {size}")
    if cfg.get("rescale_acts_by_decoder_norm"):
        w_enc, b_enc, w_dec = _fold_decoder_norm(w_enc, b_enc, w_dec)
    if not cfg.get("apply_b_dec_to_input", True):
        b_enc = b_enc + b_dec @ w_enc  # we always centre the encoder's input on b_dec
    threshold = tensors.get("threshold")

    ours = cfg.get("sae_hooks")
    if isinstance(ours, dict) and isinstance(ours.get("config"), dict):
        sae, scale = _our_sae(ours, arch, device)
    else:
        sae, scale = _foreign_sae(cfg, arch, d, nb, w_dec, threshold, device), 1.0
    if not isinstance(sae.encoder, LinearEncoder):
        raise ValueError("an SAELens SAE needs the default linear encoder")

    state = {
        "encoder.weight": w_enc.T / scale,
        "encoder.bias": b_enc,
        "dictionary.weight": w_dec * scale,
        "input_scale": torch.tensor(scale, dtype=w_dec.dtype, device=w_dec.device),
    }
    if sae.dictionary.bias is not None:
        state["dictionary.bias"] = b_dec * scale
    elif b_dec.abs().max() > 0:
        raise ValueError("the SAE config has no decoder bias but b_dec is non-zero")
    if isinstance(sae, JumpSAE):
        state["log_threshold"] = _positive(threshold).log()
    if isinstance(sae, BatchTopKSAE):
        state.update(_batchtopk_state(tensors, threshold, w_dec))
    for key, value in sae.state_dict().items():
        state.setdefault(key, value)  # e.g. buffers SAELens has no notion of
    sae.load_weights(
        {
            k: v.contiguous().to(w_dec.dtype) if v.is_floating_point() else v
            for k, v in state.items()
        }
    )
    return sae.eval()  # inference is never silently in train mode (BatchTopK: batch top-k)


def _read_saelens_config(path: Path) -> tuple[dict[str, Any], str]:
    """cfg.json and its SAELens architecture, checked to be one we can import."""
    if not path.is_dir():
        raise ValueError(f"{path} is not a directory with {SAELENS_CONFIG} and {SAELENS_WEIGHTS}")
    cfg_path = path / SAELENS_CONFIG
    try:
        cfg = json.loads(cfg_path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} has no {SAELENS_CONFIG}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{cfg_path} is not valid JSON: {err}") from err
    if not isinstance(cfg, dict):
        raise ValueError(f"{cfg_path} must hold a JSON object")
    arch = cfg.get("architecture", "standard")
    if arch not in SAELENS_ARCHITECTURES:
        raise ValueError(
            f"unsupported SAELens architecture {arch!r}; supported: {list(SAELENS_ARCHITECTURES)}"
        )
    _refuse_unrepresentable(cfg, cfg_path)
    if cfg.get("normalize_activations", "none") not in ("none", None):
        raise ValueError(
            f"normalize_activations={cfg['normalize_activations']!r} is not supported; fold the "
            "normalisation into the weights (SAELens: fold_activation_norm_scaling_factor) first"
        )
    return cfg, arch


def _refuse_unrepresentable(cfg: dict[str, Any], where: Path) -> None:
    """SAELens settings that change what the SAE computes and have no equivalent here."""
    meta = cfg.get("metadata") if isinstance(cfg.get("metadata"), dict) else {}
    head = cfg.get("hook_head_index", meta.get("hook_head_index"))
    if head is not None:
        raise ValueError(
            f"{where}: hook_head_index={head!r} (an SAE on one attention head) is not supported; "
            "sae-hooks SAEs read whole hook-point activations"
        )
    reshape = cfg.get("reshape_activations", "none")
    if reshape not in ("none", None):
        raise ValueError(
            f"{where}: reshape_activations={reshape!r} is not supported (only 'none'): the SAE "
            "would read per-head activations reshaped by SAELens"
        )
    for key in ("rescale_acts_by_decoder_norm", "apply_b_dec_to_input"):
        if key in cfg and not isinstance(cfg[key], bool):
            raise ValueError(f"{where}: {key} must be true or false, got {cfg[key]!r}")


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


def saelens_metadata(path: str | os.PathLike) -> dict[str, str | None]:
    """model_name, hook_name and our hook point (hook_name mapped to e.g. resid_post.6,
    valid on Hugging Face and TransformerLens models alike) of an SAELens directory."""
    cfg, _ = _read_saelens_config(Path(path))
    meta = cfg.get("metadata") if isinstance(cfg.get("metadata"), dict) else {}
    hook = meta.get("hook_name") or cfg.get("hook_name")
    ours = cfg.get("sae_hooks") if isinstance(cfg.get("sae_hooks"), dict) else {}
    point = ours.get("point") or (point_from_hook_name(hook) or hook if hook else None)
    return {
        "model_name": meta.get("model_name") or cfg.get("model_name"),
        "hook_name": hook,
        "point": point,
    }


def _our_sae(ours: dict[str, Any], arch: str, device: str | torch.device) -> tuple[SAE, float]:
    """The exact variant (and input_scale) an SAE exported by sae-hooks carries along."""
    config = ours["config"]
    expected = _SAELENS_NAME.get(config.get("architecture"))
    if expected != arch:
        raise ValueError(
            f"cfg.json is inconsistent: SAELens architecture {arch!r} but sae_hooks "
            f"architecture {config.get('architecture')!r}"
        )
    sae = SAE_REGISTRY[config["architecture"]].from_config(config, device=device)
    return sae, float(ours.get("input_scale", 1.0))


def _required(tensors: dict[str, torch.Tensor], arch: str) -> list[torch.Tensor]:
    names = ["W_enc", "b_enc", "W_dec", "b_dec"] + (["threshold"] if arch == "jumprelu" else [])
    missing = [n for n in names if n not in tensors]
    if missing:
        raise ValueError(f"SAELens {arch!r} weights lack {missing}; found {sorted(tensors)}")
    return [tensors[n] for n in names[:4]]


def _foreign_sae(
    cfg: dict[str, Any],
    arch: str,
    d: int,
    nb: int,
    w_dec: torch.Tensor,
    threshold: torch.Tensor | None,
    device: str | torch.device,
) -> SAE:
    """An SAE for a file SAELens wrote: 'l2' atoms if W_dec rows are unit norm, else 'identity'."""
    unit = bool(((w_dec.norm(dim=-1) - 1).abs() <= _UNIT_NORM_TOL).all())
    params = {"normalization": "l2" if unit else "identity"}
    if arch == "standard":
        return SAE(d, nb, dictionary_params=params, device=device)
    if arch == "topk":
        return TopKSAE(d, nb, top_k=int(cfg.get("k", 100)), dictionary_params=params, device=device)
    if arch == "jumprelu":
        return JumpSAE(d, nb, dictionary_params=params, device=device)
    k = cfg.get("k", 100)
    return BatchTopKSAE(d, nb, top_k_per_sample=k, dictionary_params=params, device=device)


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
