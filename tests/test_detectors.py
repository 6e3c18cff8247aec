"""Head detectors: scores against a naive loop over TransformerLens' own patterns, and on patterns
built by hand where the answer is known."""
import pytest
import torch

from patching.inspect import detectors as D
from patching.model import hooks


def _naive(pattern, name, half):
    """pattern [batch, head, dest, src] -> [head] by an explicit loop over sequences and positions."""
    batch, n_heads, n_pos, _ = pattern.shape
    out = []
    for h in range(n_heads):
        total, count = 0.0, 0
        for b in range(batch):
            for d in range(1, n_pos):
                if name == "previous_token":
                    s = d - 1
                elif d <= half:
                    continue
                else:
                    s = d - half if name == "duplicate_token" else d - half + 1
                total += float(pattern[b, h, d, s])
                count += 1
        out.append(total / count)
    return out


def test_scores_match_a_naive_loop_over_transformer_lens_patterns(gpt2_model):
    spec = D.DetectorSpec(n_sequences=3, half_length=6, seed=1)
    df = D.head_scores(gpt2_model, spec)
    tokens = D.repeated_random_tokens(gpt2_model, 3, 6, seed=1)
    _, cache = gpt2_model.bridge.run_with_cache(tokens)
    for layer in range(gpt2_model.n_layers):
        pattern = cache[hooks.pattern(layer)].float()
        for name in D.DETECTORS:
            want = _naive(pattern, name, 6)
            got = df[(df.layer == layer) & (df.detector == name)].sort_values("head").score.tolist()
            assert got == pytest.approx(want, abs=1e-5)


def test_known_patterns_score_one_where_they_should():
    half, n_pos = 4, 9
    pattern = torch.zeros(1, 3, n_pos, n_pos)
    pattern[0, :, 0, 0] = 1
    for d in range(1, n_pos):
        pattern[0, 0, d, d - 1] = 1                                  # head 0: previous token
        pattern[0, 1, d, d - half if d > half else 0] = 1            # head 1: duplicate token
        pattern[0, 2, d, d - half + 1 if d > half else 0] = 1        # head 2: induction
    for head, name in enumerate(D.DETECTORS):
        dest, src = D._detector_sources(name, n_pos, half)
        scores = pattern[0][:, dest, src].mean(-1)
        assert scores[head] == 1 and all(scores[h] < 1 for h in range(3) if h != head)


def test_sequences_repeat_and_do_not_repeat_within_a_half(gpt2_model):
    t = D.repeated_random_tokens(gpt2_model, 5, 7, seed=3)
    assert (t[:, 0] == gpt2_model.bos_token_id).all()
    assert torch.equal(t[:, 1:8], t[:, 8:])
    assert all(len(set(row[1:8].tolist())) == 7 for row in t)
    assert torch.equal(t, D.repeated_random_tokens(gpt2_model, 5, 7, seed=3))        # seeded


@pytest.mark.parametrize("kwargs, needle", [
    ({"detectors": ()}, "no detector chosen"),
    ({"detectors": ("induction", "=evil")}, "unknown detector '=evil'"),
    ({"n_sequences": 0}, "n_sequences must be a whole number from 1 to 1024, not 0"),
    ({"half_length": True}, "half_length must be a whole number"),
])
def test_bad_specs_name_the_bad_value(kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        D.DetectorSpec(**kwargs)


def test_a_sequence_longer_than_the_context_is_refused(gpt2_model):
    with pytest.raises(ValueError, match="the model takes at most"):
        D.repeated_random_tokens(gpt2_model, 1, gpt2_model.n_ctx)


def test_the_heads_command_writes_the_contract_csv(tmp_path, capsys):
    import pandas as pd

    from patching import cli
    out = tmp_path / "heads.csv"
    assert cli.main(["heads", "--detect", "induction,previous_token", "--n", "4", "--half-length", "6",
                     "--out", str(out)]) == 0
    df = pd.read_csv(out)
    assert list(df.columns) == ["layer", "head", "detector", "score"]
    assert set(df.detector) == {"induction", "previous_token"} and df.score.between(0, 1).all()
    assert cli.main(["heads", "--detect", "copying"]) == 2
    assert "unknown detector 'copying'; choose from previous_token" in capsys.readouterr().err
