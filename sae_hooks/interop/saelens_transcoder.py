"""Transcoders in SAELens's format ("transcoder", "skip_transcoder"): SAELens computes
    acts = ReLU(x @ W_enc + b_enc),   y_hat = acts @ W_dec + b_dec (+ x @ W_skip.T)
on raw MLP inputs x (apply_b_dec_to_input false: b_dec lives in the output space), with
hook_name the input point and hook_name_out the output point in its metadata.

The tensors are read off the transcoder's public maps (encode's pre-codes, decode, and
predict's skip term are affine in their inputs), so whatever scales the transcoder keeps
inside (input_scale, output_scale) are folded in as it applies them: the file maps raw
MLP inputs to raw MLP outputs exactly as `predict` does.
"""

from __future__ import annotations

from typing import Any

import torch

from sae_hooks.sae.transcoder import SkipTranscoder, Transcoder

_CHUNK = 1024  # latents decoded at once: bounded memory for wide dictionaries


@torch.no_grad()
def transcoder_tensors(tc: Transcoder) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """SAELens's tensors for `tc` and the cfg.json keys they imply."""
    weight = tc.dictionary.weight
    d_in, nb, d_out = tc.input_size, tc.nb_concepts, tc.output_size
    eye_in = torch.eye(d_in, dtype=weight.dtype, device=weight.device)
    zero_in = eye_in.new_zeros(1, d_in)
    b_enc = tc.encode(zero_in)[0]
    w_enc = tc.encode(eye_in)[0] - b_enc
    zero_z = eye_in.new_zeros(1, nb)
    b_dec = tc.decode(zero_z)
    w_dec = torch.cat(
        [
            tc.decode(torch.eye(nb, dtype=weight.dtype, device=weight.device)[lo : lo + _CHUNK])
            - b_dec
            for lo in range(0, nb, _CHUNK)
        ]
    )
    tensors = {"W_enc": w_enc, "b_enc": b_enc[0], "W_dec": w_dec, "b_dec": b_dec[0]}
    architecture = "transcoder"
    if isinstance(tc, SkipTranscoder):
        codes = eye_in.new_zeros(d_in, nb)
        skip = tc.predict(eye_in, codes) - tc.predict(zero_in, zero_z)
        tensors["W_skip"] = skip.T  # (d_out, d_in), as SAELens stores it
        architecture = "skip_transcoder"
    cfg = {
        "architecture": architecture,
        "d_in": d_in,
        "d_sae": nb,
        "d_out": d_out,
        "dtype": str(weight.dtype).removeprefix("torch."),
        "device": "cpu",
        "apply_b_dec_to_input": False,
        "normalize_activations": "none",
        "reshape_activations": "none",
    }
    return tensors, cfg
