"""A shard's share of a method's batch plan: which batches it runs (dealt by cost, largest first
to the least loaded shard) and whether it writes the cells no batch computes (shard 0 does).

Every method that can be sharded (sweep, path patching, attribution, the faithfulness curve)
builds its whole plan as usual and runs only the batches `Share.mine` gives it, so every value a
shard computes is the one the one-worker run computes (same batches, same floating-point sums).
`patching/methods/shards.py` plans the shares and merges the parts.

>>> Share(1, 2).mine([5, 3, 3, 1])
[1, 2]
"""
from __future__ import annotations

from dataclasses import dataclass

from patching.core.spec import check_whole


def deal_costs(costs: list[float], count: int) -> list[list[int]]:
    """Batch indices dealt to `count` shards: largest cost first (plan order among equal costs),
    each to the least loaded shard (ties: the lower shard number); each share in plan order.

    >>> deal_costs([5, 3, 3, 1], 2)
    [[0, 3], [1, 2]]
    """
    order = sorted(range(len(costs)), key=lambda i: -costs[i])        # stable
    load, out = [0.0] * count, [[] for _ in range(count)]
    for i in order:
        k = min(range(count), key=lambda j: (load[j], j))
        load[k] += costs[i]
        out[k].append(i)
    return [sorted(share) for share in out]


@dataclass(frozen=True)
class Share:
    """Shard `index` of `count` (0-based)."""
    index: int
    count: int

    def __post_init__(self):
        check_whole(self.count, "shard count", 1, 256)
        check_whole(self.index, "shard index", 0, self.count - 1)

    @property
    def fills(self) -> bool:
        """Whether this shard writes the cells no batch computes (NaN cells, unchanged cells)."""
        return self.index == 0

    def mine(self, costs: list[float]) -> list[int]:
        """The indices of the batches (given by cost, in plan order) this shard runs."""
        return deal_costs(costs, self.count)[self.index]
