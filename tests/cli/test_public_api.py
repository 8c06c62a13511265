"""The names ``openradio`` promises (``__all__``) resolve, and are the objects of their home modules."""

from __future__ import annotations

import importlib

import pytest

import openradio


@pytest.mark.parametrize("name", openradio.__all__)
def test_every_public_name_resolves(name):
    assert getattr(openradio, name) is not None
    assert name in dir(openradio)


def test_every_lazy_name_is_public():
    assert sorted(openradio._LAZY) == sorted(openradio.__all__)


@pytest.mark.parametrize(
    "name,home",
    [
        ("save_hf", "openradio.formats.hf"),
        ("save_transformers", "openradio.formats.native"),
        ("export_onnx", "openradio.formats.onnx"),
    ],
)
def test_the_writers_are_the_objects_of_their_home_modules(name, home):
    """Issue 26 item 8: ``openradio.save_hf`` etc. are the library's functions, not copies."""
    assert getattr(openradio, name) is getattr(importlib.import_module(home), name)


def test_an_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        openradio.nope  # noqa: B018
