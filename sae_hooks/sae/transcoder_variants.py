"""TopK, BatchTopK and JumpReLU transcoders and skip transcoders: each is the variant's
class with `PairedMixin` (sae/transcoder.py) in front, so it keeps the variant's
selection, its budget or penalty, its sparse training paths and its training contract
(AuxK, the row top-k warm-up, the running threshold, data-set thresholds), and reads
paired rows: the skip transcoders of Paulo, Shabalin & Belrose (2025) and EleutherAI
sparsify's are the TopK ones; SAELens 6 has the JumpReLU ones (`jumprelu_transcoder`,
`jumprelu_skip_transcoder`). Registered as "<variant>_transcoder" and
"<variant>_skip_transcoder"; built, trained, saved, loaded, spliced and evaluated as
`Transcoder` is.
"""

from __future__ import annotations

from .batchtopk import BatchTopKSAE
from .jump import JumpSAE
from .topk import TopKSAE
from .transcoder import PairedMixin


class TopKTranscoder(PairedMixin, TopKSAE):
    """k codes per input row (TopK), predicting the output."""

    architecture = "topk_transcoder"


class TopKSkipTranscoder(TopKTranscoder):
    """A TopK transcoder plus the linear skip term W_skip x."""

    architecture = "topk_skip_transcoder"
    skip_connection = True


class BatchTopKTranscoder(PairedMixin, BatchTopKSAE):
    """A budget of codes per batch in training, a running threshold at inference."""

    architecture = "batchtopk_transcoder"


class BatchTopKSkipTranscoder(BatchTopKTranscoder):
    """A BatchTopK transcoder plus the linear skip term W_skip x."""

    architecture = "batchtopk_skip_transcoder"
    skip_connection = True


class JumpReLUTranscoder(PairedMixin, JumpSAE):
    """JumpReLU codes (learnt per-latent thresholds, L0 penalty or target_l0)."""

    architecture = "jumprelu_transcoder"


class JumpReLUSkipTranscoder(JumpReLUTranscoder):
    """A JumpReLU transcoder plus the linear skip term W_skip x."""

    architecture = "jumprelu_skip_transcoder"
    skip_connection = True


TRANSCODERS = (
    TopKTranscoder,
    TopKSkipTranscoder,
    BatchTopKTranscoder,
    BatchTopKSkipTranscoder,
    JumpReLUTranscoder,
    JumpReLUSkipTranscoder,
)
"""The transcoders composed here (the ReLU ones are sae/transcoder.py's)."""
