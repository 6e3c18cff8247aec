"""logit_diff = logit(answer) - logit(wrong) at the last position. Higher is more like clean."""
from jaxtyping import Float
from torch import Tensor

from metrics.base import Metric, MetricInputs


def logit_diff(logits: Float[Tensor, "batch vocab"], inputs: MetricInputs) -> Float[Tensor, "batch"]:
    """logit(answer) - logit(wrong).

    >>> import torch
    >>> logit_diff(torch.tensor([[0., 2., 1.]]), MetricInputs(torch.tensor([1]), torch.tensor([2]), None))
    tensor([1.])
    """
    return (logits.gather(1, inputs.answer[:, None]) - logits.gather(1, inputs.wrong[:, None]))[:, 0]


METRIC = Metric("logit_diff", logit_diff, "logit(answer) - logit(wrong)", "higher")
