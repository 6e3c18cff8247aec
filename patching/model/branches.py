"""Continuations appended after a prompt as two branches of one sequence (multi-token answers).

`seq_logprob_diff` needs the logits after each answer token and after each wrong token, fed
after the prompt. Rather than two more runs per patched run (prompt + answer, prompt + wrong,
each recomputing the prompt's positions), each row is one sequence laid out as a tree:

    slots:     0 .. T-1          T .. T+A-1               T+A .. T+A+W-1
    tokens:    the prompt        answer tokens 1..A       wrong tokens 1..W
    positions: 0 .. T-1          T .. T+A-1               T .. T+W-1
    sees:      earlier prompt    prompt + earlier answer  prompt + earlier wrong

(A = La - 1, W = Lw - 1 for the set's longest answer La and wrong Lw; a row's shorter
continuation is padded with token 0 at its branch's end, which no real slot sees.) Attention
follows `visible` and positional embeddings / rotary follow `positions`, so each branch's
logits are exactly those of prompt + that continuation run alone, and the prompt's positions are
computed once. The runner returns the logits of the last `readout` = 1 + A + W slots (the
prompt's last position, then every continuation slot): the layout `metrics.sequence` reads.

>>> tokens, b = extend(torch.tensor([[7, 8]]), torch.tensor([[1, 2, 3]]), torch.tensor([[4, 5]]))
>>> tokens.tolist(), b.positions.tolist(), b.readout
([[7, 8, 1, 2, 4]], [0, 1, 2, 3, 2], 4)
>>> b.visible[4].int().tolist()                      # the wrong branch sees the prompt and itself
[1, 1, 0, 0, 1]
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from jaxtyping import Bool, Int
from torch import Tensor

from patching.model.runner import LayerCache


@dataclass(frozen=True, eq=False)
class Branches:
    """The layout of a prompt of `n_prompt` tokens followed by two continuation branches."""
    n_prompt: int                            # T
    n_answer: int                            # A: answer slots (the answer's tokens but its last)
    n_wrong: int                             # W: wrong slots
    positions: Int[Tensor, "slots"]          # position id of each slot
    visible: Bool[Tensor, "slots slots"]     # query slot x key slot

    def __post_init__(self):
        if min(self.n_prompt, self.n_answer + 1, self.n_wrong + 1) < 1:
            raise ValueError(f"a prompt of {self.n_prompt} tokens with {self.n_answer} answer and "
                             f"{self.n_wrong} wrong slots is not a layout")

    @property
    def readout(self) -> int:
        """Slots whose logits are read: the prompt's last and every continuation slot."""
        return 1 + self.n_answer + self.n_wrong


def extend(tokens: Int[Tensor, "b T"], answer_seq: Int[Tensor, "b La"], wrong_seq: Int[Tensor, "b Lw"]
           ) -> tuple[Int[Tensor, "b slots"], Branches]:
    """The prompts with their answer and wrong continuations (all tokens but each one's last,
    -1 padding) appended as branches; see the module doc.

    >>> extend(torch.tensor([[7]]), torch.tensor([[1]]), torch.tensor([[2]]))[0].tolist()
    [[7]]
    """
    t, n_a, n_w = tokens.shape[1], answer_seq.shape[1] - 1, wrong_seq.shape[1] - 1
    cont = torch.cat((answer_seq[:, :n_a], wrong_seq[:, :n_w]), dim=1).clamp(min=0)
    slots = t + n_a + n_w
    device = tokens.device
    positions = torch.cat((torch.arange(t + n_a, device=device), torch.arange(t, t + n_w, device=device)))
    branch = torch.cat((torch.zeros(t, dtype=torch.long), torch.ones(n_a, dtype=torch.long),
                        torch.full((n_w,), 2, dtype=torch.long))).to(device)      # 0 prompt, 1 answer, 2 wrong
    idx = torch.arange(slots, device=device)
    visible = (idx[None, :] <= idx[:, None]) & ((branch[None, :] == 0) | (branch[None, :] == branch[:, None]))
    return torch.cat((tokens, cont.to(tokens.dtype)), dim=1), Branches(t, n_a, n_w, positions, visible)


def graft(run, base, n_prompt: int):
    """`run` (a RunCache) with the activations of every continuation slot (>= n_prompt) taken
    from `base`: the donor of a patched run whose patch must reach prompt positions only (its
    continuation in the patched run is computed fresh, from the base's own). Logits stay `run`'s.

    >>> graft(clean, corrupt, prompts.n_pos)          # doctest: +SKIP
    """
    def mix(name: str, a: Tensor | None, b: Tensor | None) -> Tensor | None:
        if a is None:
            return None
        dim = 2 if name == "pattern" or (name == "mlp_pre" and a.dim() == 4) else 1   # the slot axis
        if a.shape[dim] == n_prompt:
            return a
        return torch.cat((a.narrow(dim, 0, n_prompt), b.narrow(dim, n_prompt, b.shape[dim] - n_prompt)), dim)

    layers = [LayerCache(*(mix(f.name, getattr(r, f.name), getattr(s, f.name)) for f in dataclasses.fields(LayerCache)))
              for r, s in zip(run.layers, base.layers)]
    return dataclasses.replace(run, layers=layers)
