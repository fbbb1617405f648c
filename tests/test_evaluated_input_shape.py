"""Evaluating a checkpoint on images of another shape than it was trained on is refused, not scored."""

from __future__ import annotations

import pytest

from kd_lightning.checkpointing import check_input_shape
from kd_lightning.errors import ConfigError
from kd_lightning.models import create_model


@pytest.fixture(scope="module")
def network():
    return create_model("small_cnn", 10, width=4, in_chans=3)


@pytest.fixture(scope="module")
def resizing_network():
    return create_model("small_cnn", 10, width=4, in_chans=3, input_size=8)


def test_the_training_shape_passes(network):
    check_input_shape((3, 8, 8), (3, 8, 8), network, "a.ckpt")
    check_input_shape((3, 8, 8), (None, 8, 8), network, "a.ckpt")


@pytest.mark.parametrize(
    ("given", "shown"), [((3, 16, 16), "3×16×16"), ((None, 16, 16), "16×16"), ((1, 8, 8), "1×8×8")]
)
def test_another_size_or_channel_count_is_refused(network, given, shown):
    with pytest.raises(ConfigError, match=f"a.ckpt was trained on 3×8×8 images but the data gives {shown}"):
        check_input_shape((3, 8, 8), given, network, "a.ckpt")


def test_a_network_that_resizes_its_input_takes_any_size_but_not_other_channels(resizing_network):
    check_input_shape((3, 8, 8), (3, 32, 32), resizing_network, "a.ckpt")
    with pytest.raises(ConfigError, match="gives 1×32×32"):
        check_input_shape((3, 8, 8), (1, 32, 32), resizing_network, "a.ckpt")
