"""kl = KL(clean || patched) of the next-token distribution. Lower is more like clean (0 = clean)."""
from jaxtyping import Float
from torch import Tensor

from metrics.base import Metric, MetricInputs


def kl(logits: Float[Tensor, "batch vocab"], inputs: MetricInputs) -> Float[Tensor, "batch"]:
    """sum p_clean * (log p_clean - log p_patched).

    >>> import torch
    >>> x = torch.tensor([[0., 1.]])
    >>> kl(x, MetricInputs(None, None, x.log_softmax(-1)))
    tensor([0.])
    """
    clean = inputs.clean_logprobs
    return (clean.exp() * (clean - logits.log_softmax(-1))).sum(-1)


METRIC = Metric("kl", kl, "KL(p_clean || p_patched)", "lower")
