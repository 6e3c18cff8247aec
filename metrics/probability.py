"""Probability metrics: prob_diff, logprob (of the answer), accuracy (top-1). Higher is more like clean."""
from jaxtyping import Float
from torch import Tensor

from metrics.base import Metric, MetricInputs


def prob_diff(logits: Float[Tensor, "batch vocab"], inputs: MetricInputs) -> Float[Tensor, "batch"]:
    """p(answer) - p(wrong) under the softmax of the last position.

    >>> import torch
    >>> prob_diff(torch.tensor([[0., 0.]]), MetricInputs(torch.tensor([0]), torch.tensor([1]), None))
    tensor([0.])
    """
    probs = logits.softmax(-1)
    return (probs.gather(1, inputs.answer[:, None]) - probs.gather(1, inputs.wrong[:, None]))[:, 0]


def logprob(logits: Float[Tensor, "batch vocab"], inputs: MetricInputs) -> Float[Tensor, "batch"]:
    """log p(answer).

    >>> import torch
    >>> logprob(torch.tensor([[0., 0.]]), MetricInputs(torch.tensor([0]), torch.tensor([1]), None))
    tensor([-0.6931])
    """
    return logits.log_softmax(-1).gather(1, inputs.answer[:, None])[:, 0]


def accuracy(logits: Float[Tensor, "batch vocab"], inputs: MetricInputs) -> Float[Tensor, "batch"]:
    """1 where the answer is the top-1 token, else 0.

    >>> import torch
    >>> accuracy(torch.tensor([[0., 1.]]), MetricInputs(torch.tensor([1]), torch.tensor([0]), None))
    tensor([1.])
    """
    return (logits.argmax(-1) == inputs.answer).to(logits.dtype)


PROB_DIFF = Metric("prob_diff", prob_diff, "p(answer) - p(wrong)", "higher")
LOGPROB = Metric("logprob", logprob, "log p(answer)", "higher")
ACCURACY = Metric("accuracy", accuracy, "1 if argmax = answer else 0", "higher")
