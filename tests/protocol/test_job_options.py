"""Typed overrides ("stage.field=value") as an artist types them in the panel or on the command line."""

import pytest
from dreampolish.protocol.errors import ValidationError
from dreampolish.protocol.job import parse_options


def test_values_become_bools_ints_floats_or_strings():
    assert parse_options(" nerf.steps=500, texture.objective = dsd ,polish.enabled=False,nerf.lr=1e-2") == {
        "nerf.steps": 500, "texture.objective": "dsd", "polish.enabled": False, "nerf.lr": 0.01}
    assert parse_options("") == {}


@pytest.mark.parametrize("text,bad", [("nerf.steps", "nerf.steps"), ("=3", "=3"), ("nerf.steps=", "nerf.steps="),
                                      ("a=1,,b", "b")])
def test_malformed_items_are_refused_by_name(text, bad):
    with pytest.raises(ValidationError, match=f"override '{bad}' must read stage.field=value"):
        parse_options(text)
