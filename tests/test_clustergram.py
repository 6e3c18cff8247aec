"""The head clustergram: profiles read from the per-pair effects, distances and the average
linkage checked against plain computations, the figure's order, bad input named."""
import itertools
import math

import numpy as np
import pytest
from patching import PatchSpec, PromptSet, sweep
from patching.figures.clustergram import clustergram_figure, dendrogram_lines
from patching.inspect.clustergram import ClusterSpec, clustergram, distances, head_profiles

@pytest.fixture(scope="module")
def head_result(gpt2_model, ioi_prompts):
    return sweep(gpt2_model, ioi_prompts, PatchSpec(kind="head_out"))


@pytest.fixture(scope="module")
def per_pos_result(gpt2_model, ioi_prompts):
    return sweep(gpt2_model, ioi_prompts, PatchSpec(kind="head_out", per_position=True))


def plain_average_linkage(x: np.ndarray) -> list[tuple[frozenset, frozenset, float]]:
    """Textbook UPGMA: repeatedly merge the two clusters with the smallest mean pairwise euclidean
    distance between their members (no Lance-Williams update, no scipy)."""
    clusters = [frozenset([i]) for i in range(len(x))]
    merges = []
    while len(clusters) > 1:
        best = None
        for a, b in itertools.combinations(clusters, 2):
            d = np.mean([math.dist(x[i], x[j]) for i in a for j in b])
            if best is None or d < best[2] - 1e-12:
                best = (a, b, d)
        a, b, d = best
        merges.append((a, b, d))
        clusters = [c for c in clusters if c not in (a, b)] + [a | b]
    return merges


def test_profiles_are_the_per_pair_effects(head_result):
    heads, names, x = head_profiles(head_result, ClusterSpec(value="effect"))
    L, H, P = head_result.per_pair.shape
    assert len(heads) == L * H and names == [f"pair {p}" for p in range(P)]
    base = head_result.corrupt_baseline                       # denoise: the unpatched run is corrupt
    for row, (layer, head) in zip(x, heads):
        assert np.allclose(row, (head_result.per_pair[layer, head] - base).numpy())
    _, _, xn = head_profiles(head_result, ClusterSpec(value="normalized"))
    gap = head_result.clean_value - head_result.corrupt_value
    assert np.allclose(xn, x / gap)
    _, names, xm = head_profiles(head_result, ClusterSpec(profile="mean", value="effect"))
    assert names == ["mean"] and np.allclose(xm[:, 0], x.mean(1))


def test_per_position_profiles_are_position_major(per_pos_result):
    heads, names, x = head_profiles(per_pos_result, ClusterSpec(value="effect"))
    L, T, H, P = per_pos_result.per_pair.shape
    assert x.shape == (L * H, T * P)
    assert names[0].startswith("pos 0 ") and names[0].endswith("· pair 0") and names[1].endswith("· pair 1")
    eff = (per_pos_result.per_pair - per_pos_result.corrupt_baseline).numpy()
    layer, head = heads[5]
    assert np.allclose(x[5], eff[layer, :, head, :].reshape(-1))


def test_average_linkage_matches_a_plain_upgma(per_pos_result):
    cg = clustergram(per_pos_result, ClusterSpec(value="effect", linkage="average"))
    x = dict(zip(cg.heads_in, cg.profile[[cg.heads.index(h) for h in cg.heads_in]]))
    pts = np.stack([x[h] for h in cg.heads_in])
    plain = plain_average_linkage(pts)
    assert np.allclose(sorted(cg.linkage[:, 2]), sorted(d for _, _, d in plain), atol=1e-9)
    # the same merges: the members under each scipy node equal the plain method's
    n = len(pts)
    members = {i: frozenset([i]) for i in range(n)}
    for step, (a, b, _, size) in enumerate(cg.linkage):
        members[n + step] = members[int(a)] | members[int(b)]
        assert len(members[n + step]) == size
    assert {members[n + s] for s in range(n - 1)} == {a | b for a, b, _ in plain}


def test_correlation_distance_matches_pearson():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(5, 7))
    d = distances(x, "correlation")
    expect = [1 - np.corrcoef(x[i], x[j])[0, 1] for i, j in itertools.combinations(range(5), 2)]
    assert np.allclose(d, expect)
    flat = np.vstack([x, np.zeros(7), np.full(7, 3.0)])
    d = distances(flat, "correlation")
    from scipy.spatial.distance import squareform
    sq = squareform(d)
    assert sq[5, 6] == 0 and np.all(sq[5, :5] == 1) and np.all(np.isfinite(d))


def test_leaf_order_frame_and_linkage_frame(head_result):
    cg = clustergram(head_result, head_labels={(1, 2): "induction"})
    df = cg.frame()
    assert df.order.tolist() == list(range(len(cg.heads)))
    assert sorted(zip(df.layer, df["head"])) == sorted(cg.heads_in)
    row = df[(df.layer == 1) & (df["head"] == 2)].iloc[0]
    assert row.label == "L1H2 · induction" and row.detector == "induction"
    assert (df.joins_at >= 0).all() and df.joins_at.max() <= cg.linkage[:, 2].max()
    lf = cg.linkage_frame()
    assert lf["size"].iloc[-1] == len(cg.heads) and lf.distance.is_monotonic_increasing
    # rows of the profile frame follow the leaf order
    pf = cg.profile_frame()
    assert pf.groupby("order").label.first().tolist() == df.label.tolist()


def test_figure_rows_follow_the_dendrogram(per_pos_result):
    cg = clustergram(per_pos_result, head_labels={(0, 1): "previous_token"})
    fig = clustergram_figure(cg)
    dend, heat = fig.data
    assert heat.type == "heatmap" and np.allclose(np.asarray(heat.z), cg.profile)
    assert list(fig.layout.yaxis2.ticktext) == [cg.label(h) for h in cg.heads]
    assert "L0H1 · previous_token" in fig.layout.yaxis2.ticktext
    ys = [v for v in dend.y if v is not None]
    assert min(ys) == 0 and max(ys) == len(cg.heads) - 1
    from scipy.cluster.hierarchy import dendrogram
    assert dendrogram(cg.linkage, no_plot=True)["leaves"] == [cg.heads_in.index(h) for h in cg.heads]
    xs, _ = dendrogram_lines(cg.linkage)
    assert max(v for v in xs if v is not None) == pytest.approx(cg.linkage[:, 2].max())


def test_mixed_length_roles_name_the_columns(gpt2_model):
    from tests.test_roles import TEXTS, roles_of
    from patching import PromptPair
    pairs = [PromptPair(c, k, " " + io, " " + s, roles_of(gpt2_model, c, io, s)) for c, k, io, s in TEXTS]
    r = sweep(gpt2_model, PromptSet.from_pairs(gpt2_model, pairs), PatchSpec(kind="head_out", per_position=True))
    heads, names, x = head_profiles(r, ClusterSpec(profile="mean", value="effect"))
    assert names == [f"pos {role} · mean" for role in r.roles]
    assert np.allclose(x[3], r.effect.permute(0, 2, 1).reshape(len(heads), -1)[3].numpy())
    cg = clustergram(r, ClusterSpec(distance="correlation", linkage="single"))
    assert cg.profile.shape == (len(heads), len(r.roles) * len(pairs))


def test_bad_input_is_named(gpt2_model, ioi_prompts, head_result):
    r = sweep(gpt2_model, ioi_prompts, PatchSpec(kind="resid_pre"))
    with pytest.raises(ValueError, match="needs a result with a head axis.*layer, pos"):
        clustergram(r)
    with pytest.raises(ValueError, match="linkage must be one of average, complete, single, not 'ward'"):
        ClusterSpec(linkage="ward")
    with pytest.raises(ValueError, match="profile must be one of pairs, mean, not 'x'"):
        ClusterSpec(profile="x")
    same = type(head_result)(head_result.spec, head_result.axes, head_result.coords, head_result.per_pair,
                             head_result.clean_baseline, head_result.clean_baseline.clone())
    with pytest.raises(ValueError, match="baselines are equal.*use value 'effect'"):
        clustergram(same)
    holes = head_result.per_pair.clone()
    holes[:, :] = float("nan")
    holes[0, 0] = 1.0
    empty = type(head_result)(head_result.spec, head_result.axes, head_result.coords, holes,
                              head_result.clean_baseline, head_result.corrupt_baseline)
    with pytest.raises(ValueError, match="at least 2 heads with computed values, got 1"):
        clustergram(empty)
