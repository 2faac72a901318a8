"""Against the real SAELens reader, where sae_lens is importable (it is not in the
offline main environment: `pip install --no-deps sae-lens simple-parsing ...` beside it,
or bench/saelens_interop.py's bench venv). Our exports load with SAELens's own
`SAE.load_from_disk`, identity as recorded (not SAELens's defaults), and SAELens's
BatchTopK / Matryoshka training checkpoints import as its inference SAEs compute."""

from __future__ import annotations

import pytest
import torch

from sae_hooks.interop import RunIdentity, export_saelens, import_saelens
from sae_hooks.sae import BatchTopKSAE, JumpSAE, TopKSAE

lens = pytest.importorskip("sae_lens")

D, NB = 12, 40


@pytest.mark.parametrize("make", [lambda: TopKSAE(D, NB, top_k=5), lambda: JumpSAE(D, NB)])
def test_saelens_loads_our_export_with_its_identity(make, tmp_path):
    torch.manual_seed(0)
    sae = make()
    with torch.no_grad():
        for p in sae.parameters():
            p.add_(0.1 * torch.randn_like(p))
        sae.input_scale.fill_(2.5)
    identity = RunIdentity(
        model_name="tiny-org/tiny-llama", point="resid_post.1", context_size=32, prepend_bos=False
    )
    theirs = lens.SAE.load_from_disk(str(export_saelens(sae.eval(), tmp_path, identity=identity)))
    x = torch.randn(64, D) * 3
    torch.testing.assert_close(theirs(x), sae(x).x_hat, rtol=1e-5, atol=1e-5)
    meta = theirs.cfg.metadata
    assert (meta.model_name, meta.prepend_bos, meta.context_size) == (
        "tiny-org/tiny-llama",
        False,
        32,
    )
    assert meta.hook_name == "blocks.1.hook_resid_post" and meta.dataset_path is None


@pytest.mark.parametrize("arch", ["batchtopk", "matryoshka_batchtopk"])
def test_saelens_training_checkpoints_import(arch, tmp_path):
    from sae_lens.saes.batchtopk_sae import BatchTopKTrainingSAE, BatchTopKTrainingSAEConfig
    from sae_lens.saes.matryoshka_batchtopk_sae import (
        MatryoshkaBatchTopKTrainingSAE,
        MatryoshkaBatchTopKTrainingSAEConfig,
    )

    torch.manual_seed(0)
    if arch == "batchtopk":
        training = BatchTopKTrainingSAE(BatchTopKTrainingSAEConfig(d_in=D, d_sae=NB, k=4.0))
    else:
        cfg = MatryoshkaBatchTopKTrainingSAEConfig(
            d_in=D, d_sae=NB, k=4.0, matryoshka_widths=[8, 20, NB]
        )
        training = MatryoshkaBatchTopKTrainingSAE(cfg)
    with torch.no_grad():
        for p in training.parameters():
            p.add_(0.1 * torch.randn_like(p))
        training.topk_threshold.fill_(0.05)
    training.save_model(str(tmp_path / "checkpoint"))
    training.save_inference_model(str(tmp_path / "inference"))
    ours = import_saelens(tmp_path / "checkpoint")
    assert isinstance(ours, BatchTopKSAE) and ours.architecture == arch
    theirs = lens.SAE.load_from_disk(str(tmp_path / "inference"))
    x = torch.randn(64, D)
    torch.testing.assert_close(ours(x).x_hat, theirs(x), rtol=1e-5, atol=1e-5)
