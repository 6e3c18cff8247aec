"""Task presets draw pairs that run together: n pairs of one token length, for every count."""
import pytest

from patching import PromptSet
from patching.tasks.families import TASKS, make_pairs
from patching.tasks.presets import runnable_pairs, usable_length


@pytest.fixture(scope="module")
def shipped():
    from patching import load_model
    return load_model("default")


@pytest.mark.parametrize("task", list(TASKS))
@pytest.mark.parametrize("n", [1, 2, 16])
def test_every_task_gives_n_pairs_that_run_together(shipped, task, n):
    pairs = runnable_pairs(shipped, task, n)
    prompts = PromptSet.from_pairs(shipped, pairs)           # refused if the lengths differed
    assert prompts.n_pairs == n
    assert runnable_pairs(shipped, task, n) == pairs         # deterministic


@pytest.mark.slow
@pytest.mark.parametrize("task", list(TASKS))
def test_the_largest_preset_count_runs(shipped, task):
    assert PromptSet.from_pairs(shipped, runnable_pairs(shipped, task, 64)).n_pairs == 64


def test_pairs_come_in_draw_order_and_skip_only_other_lengths(shipped):
    pairs = runnable_pairs(shipped, "ioi", 6)
    drawn = make_pairs("ioi", 200)
    at = [[d.clean for d in drawn].index(p.clean) for p in pairs]
    assert at == sorted(at)
    length = usable_length(shipped, pairs[0])
    skipped = [p for p in drawn[:at[-1]] if p.clean not in {q.clean for q in pairs}]
    assert all(usable_length(shipped, p) != length for p in skipped)


def test_too_many_pairs_of_one_length_is_refused_with_the_count(shipped):
    with pytest.raises(ValueError, match=r"only \d+ 'ioi' pairs of one token length among 8 drawn"):
        runnable_pairs(shipped, "ioi", 8, max_draws=8)
    with pytest.raises(ValueError, match="number of pairs must be a whole number from 1 to 4096, not 0"):
        runnable_pairs(shipped, "ioi", 0)
