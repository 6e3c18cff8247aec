"""seq_logprob_diff: multi-token answers, teacher-forced.

log p(answer tokens | prompt) - log p(wrong tokens | prompt), each the sum of its tokens'
log-probabilities with the earlier ones fed after the prompt. Higher is more like clean. With
single-token answer and wrong it equals logit_diff (the log-softmax normaliser cancels).

The logits it reads, [batch, readout, vocab] (`patching.model.branches` lays the runs out):
row 0 is the prompt's last position; rows 1..La-1 follow answer tokens 1..La-1; rows
La..La+Lw-2 follow wrong tokens 1..Lw-1 (La, Lw: the longest answer and wrong in the set, each
row's shorter ones padded with -1 and not counted). Last-position logits [batch, vocab] are
enough when every answer and wrong is one token.
"""
from __future__ import annotations

import torch
from jaxtyping import Float, Int
from torch import Tensor

from metrics.base import Metric, MetricInputs


def token_seqs(prompts) -> dict[str, Int[Tensor, "pairs L"]]:
    """Each pair's answer and wrong as token ids, padded with -1 to the set's longest; `prompts`
    must carry its tokenizer (`encode`).

    >>> from types import SimpleNamespace as P
    >>> seqs = token_seqs(P(pairs=[P(answer="12", wrong="3")], encode=lambda t: [int(c) for c in t],
    ...                     clean_tokens=torch.zeros(1, 1)))
    >>> seqs["answer_seq"].tolist(), seqs["wrong_seq"].tolist()
    ([[1, 2]], [[3]])
    """
    encode = getattr(prompts, "encode", None)
    if encode is None:
        raise ValueError("seq_logprob_diff needs the prompt set's tokenizer; build the set with "
                         "PromptSet.from_pairs(..., multi_token=True)")
    device = prompts.clean_tokens.device

    def padded(texts: list[str]) -> Tensor:
        ids = [encode(t) for t in texts]
        width = max(len(i) for i in ids)
        return torch.tensor([i + [-1] * (width - len(i)) for i in ids], device=device)

    return {"answer_seq": padded([p.answer for p in prompts.pairs]),
            "wrong_seq": padded([p.wrong for p in prompts.pairs])}


def _sum_logprobs(logprobs: Float[Tensor, "batch readout vocab"], slots: list[int],
                  ids: Int[Tensor, "batch L"]) -> Float[Tensor, "batch"]:
    picked = logprobs[:, slots].gather(2, ids.clamp(min=0)[..., None])[..., 0]      # [batch, L]
    return (picked * (ids >= 0)).sum(-1)


def seq_logprob_diff(logits: Float[Tensor, "batch readout vocab"], inputs: MetricInputs) -> Float[Tensor, "batch"]:
    """sum log p(answer tokens) - sum log p(wrong tokens), teacher-forced.

    >>> x = torch.tensor([[[0., 0., 0.], [0., 9., 0.]]])       # readout: last prompt position, after answer token 1
    >>> seq_logprob_diff(x, MetricInputs(None, None, None, answer_seq=torch.tensor([[0, 1]]),
    ...                                  wrong_seq=torch.tensor([[2]])))
    tensor([-0.0002])
    """
    answer, wrong = inputs.answer_seq, inputs.wrong_seq
    n_answer, n_wrong = answer.shape[1] - 1, wrong.shape[1] - 1
    if logits.dim() == 2:
        logits = logits[:, None]
    if logits.shape[1] != 1 + n_answer + n_wrong:
        raise ValueError(f"seq_logprob_diff: answers of up to {n_answer + 1} and wrongs of up to {n_wrong + 1} "
                         f"tokens need the logits after each of their tokens ({1 + n_answer + n_wrong} "
                         f"positions), got {logits.shape[1]}; exact sweeps (sweep, refine) on models with the engine's "
                         "runner compute them, other methods read the last position only: give single-token "
                         "answers there")
    logprobs = logits.log_softmax(-1)
    return (_sum_logprobs(logprobs, [0, *range(1, 1 + n_answer)], answer)
            - _sum_logprobs(logprobs, [0, *range(1 + n_answer, 1 + n_answer + n_wrong)], wrong))


METRIC = Metric("seq_logprob_diff", seq_logprob_diff, "sum log p(answer tokens) - sum log p(wrong tokens)",
                "higher", prepare=token_seqs, continuation=True)
