"""Random translations of a classifier's input (vaekit.augment)."""

from __future__ import annotations

import torch

from vaekit.augment import random_shift


def test_zero_pixels_is_the_identity():
    x = torch.rand(3, 1, 5, 5)
    assert random_shift(x, 0) is x


def test_each_image_moves_by_its_own_offset_within_the_bound_and_every_offset_occurs():
    x = torch.zeros(400, 1, 7, 7)
    x[:, 0, 3, 3] = 1.0  # one bright pixel in the middle of each image
    moved = random_shift(x, 2, torch.Generator().manual_seed(0))
    assert moved.shape == x.shape
    assert torch.equal(moved.sum((1, 2, 3)), torch.ones(400))  # nothing lost: the pixel stays in the frame
    where = moved[:, 0].flatten(1).argmax(-1)
    dy, dx = where // 7 - 3, where % 7 - 3
    assert dy.abs().max() == 2 and dx.abs().max() == 2
    assert len(set(zip(dy.tolist(), dx.tolist()))) == 25  # all (2p+1)^2 offsets


def test_what_enters_the_frame_is_zero_and_channels_move_together():
    x = torch.ones(200, 3, 6, 6)
    x[:, 1] = 2.0
    moved = random_shift(x, 1, torch.Generator().manual_seed(1))
    kept = moved[:, 0].sum((1, 2))  # (6 - |dy|) (6 - |dx|) ones survive
    assert set(kept.tolist()) == {36.0, 30.0, 25.0}
    torch.testing.assert_close(moved[:, 1], 2 * moved[:, 0])
    torch.testing.assert_close(moved[:, 2], moved[:, 0])
