import pytest

from patching import KINDS, PatchSpec
from patching.core.spec import parse_heads, parse_int_list


def test_round_trip():
    spec = PatchSpec(kind="head_q", per_position=True, layers=(1, 0), positions=(3,), heads=((1, 2),),
                     direction="noise", metric="kl")
    assert spec.layers == (0, 1)
    assert PatchSpec.from_dict(spec.to_dict()) == spec


@pytest.mark.parametrize("kwargs,message", [
    ({"kind": "bogus"}, "unknown kind 'bogus'; choose one of resid_pre"),
    ({"kind": "resid_pre", "direction": "up"}, "direction must be 'denoise' or 'noise', not 'up'"),
    ({"kind": "resid_pre", "per_position": True}, "already indexed by position"),
    ({"kind": "resid_pre", "layers": ()}, "layers is empty"),
    ({"kind": "resid_pre", "layers": (-1,)}, "layers must be >= 0"),
])
def test_bad_spec_messages(kwargs, message):
    with pytest.raises(ValueError) as err:
        PatchSpec(**kwargs)
    assert message in str(err.value)


def test_from_dict_rejects_unknown_fields():
    with pytest.raises(ValueError, match="unknown PatchSpec fields"):
        PatchSpec.from_dict({"kind": "resid_pre", "colour": "red"})


def test_parse_lists():
    assert parse_int_list("0-2,7", "layers") == (0, 1, 2, 7)
    assert parse_int_list("", "layers") is None
    assert parse_heads("1.4, 9.9") == ((1, 4), (9, 9))
    with pytest.raises(ValueError, match="bad layers 'x'"):
        parse_int_list("1,x", "layers")
    with pytest.raises(ValueError, match="bad layers '5-2'"):
        parse_int_list("5-2", "layers")
    with pytest.raises(ValueError, match="bad head '3'"):
        parse_heads("3")


def test_every_kind_has_axes():
    for kind in KINDS.values():
        assert kind.axes()[0] == "layer"
        if kind.has_per_position:
            assert kind.axes(per_position=True) == ("layer", "pos") + kind.index_axes
