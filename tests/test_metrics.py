import pytest
import torch

from metrics import METRICS, MetricInputs, get_metric


@pytest.fixture
def inputs():
    clean = torch.tensor([[2.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
    return MetricInputs(torch.tensor([0, 1]), torch.tensor([1, 2]), clean.log_softmax(-1)), clean


def test_values(inputs):
    inp, clean = inputs
    logits = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 3.0]])
    assert torch.allclose(get_metric("logit_diff")(logits, inp), torch.tensor([1.0, -3.0]))
    p = logits.softmax(-1)
    assert torch.allclose(get_metric("prob_diff")(logits, inp), torch.tensor([p[0, 0] - p[0, 1], p[1, 1] - p[1, 2]]))
    assert torch.allclose(get_metric("logprob")(logits, inp), logits.log_softmax(-1)[[0, 1], [0, 1]])
    assert get_metric("accuracy")(logits, inp).tolist() == [1.0, 0.0]
    assert torch.allclose(get_metric("kl")(clean, inp), torch.zeros(2), atol=1e-6)
    assert (get_metric("kl")(logits, inp) > 0).all()


def test_every_metric_says_which_way_is_clean():
    for m in METRICS.values():
        assert m.clean_is in ("higher", "lower") and m.formula


def test_user_metric_by_path():
    m = get_metric("metrics.logit_diff:logit_diff")
    assert m.name == "metrics.logit_diff:logit_diff"


@pytest.mark.parametrize("ref,message", [
    ("nope", "unknown metric 'nope'; choose one of logit_diff"),
    ("nomodule.x:y", "cannot load metric 'nomodule.x:y'"),
    ("metrics:nothing_here", "cannot load metric 'metrics:nothing_here'"),
    ("metrics:", "must look like 'package.module:function'"),
])
def test_bad_metric(ref, message):
    with pytest.raises(ValueError) as err:
        get_metric(ref)
    assert message in str(err.value)


def test_metric_must_return_one_value_per_row(inputs):
    m = get_metric(lambda logits, inp: logits.sum())
    with pytest.raises(ValueError, match="one value per row"):
        m(torch.zeros(2, 3), inputs[0])
