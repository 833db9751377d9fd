"""FastConv2d: every way of computing it equals the convolution it replaces."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from kpvid.models.fast_conv import FastConv2d, is_fast_convertible


def conv_and_input(c_in: int, c_out: int, size: tuple[int, int], batch: int = 2,
                   bias: bool = True) -> tuple[nn.Conv2d, torch.Tensor]:
    torch.manual_seed(c_in * 1000 + c_out)
    conv = nn.Conv2d(c_in, c_out, 3, padding=1, bias=bias).eval()
    x = torch.randn(batch, c_in, *size)
    return conv, x


@pytest.mark.parametrize(("c_in", "c_out", "size"), [
    (8, 16, (12, 20)), (32, 8, (4, 4)), (3, 5, (8, 16)), (16, 16, (32, 32))])
@pytest.mark.parametrize("way", ["direct", "winograd", "gemm"])
def test_every_way_matches_the_convolution(c_in, c_out, size, way):
    conv, x = conv_and_input(c_in, c_out, size)
    fast = FastConv2d(conv)
    with torch.no_grad():
        expected = conv(x)
        got = getattr(fast, "_" + way)(x)
        got_channels_last = getattr(fast, "_" + way)(x.contiguous(
            memory_format=torch.channels_last))
    scale = expected.abs().max()
    assert got.shape == expected.shape
    assert (got - expected).abs().max() < 1e-5 * scale
    assert (got_channels_last - expected).abs().max() < 1e-5 * scale


def test_forward_times_the_candidates_once_per_shape():
    conv, x = conv_and_input(8, 8, (8, 12), bias=False)
    fast = FastConv2d(conv)
    assert fast.candidates(8, 12) == ["direct"]  # too little work to time anything else
    fast.MIN_WORK = 0
    assert fast.candidates(8, 12) == ["direct", "winograd", "gemm"]
    assert fast.candidates(6, 12) == ["direct", "gemm"]  # 6 is not a multiple of the tile
    assert fast.candidates(64, 64) == ["direct", "winograd"]  # im2col only on small maps
    with torch.no_grad():
        out = fast(x)
        assert set(fast.choices) == {(2, 8, 12)}
        assert fast.choices[(2, 8, 12)] in fast.candidates(8, 12)
        fast.choices[(2, 8, 12)] = "gemm"  # a choice made stays made
        assert torch.equal(fast(x), fast._gemm(x))
        fast(torch.randn(1, 8, 6, 12))
    assert set(fast.choices) == {(2, 8, 12), (1, 6, 12)}
    assert fast.choices[(1, 6, 12)] != "winograd"
    assert (out - conv(x)).abs().max() < 1e-5 * out.abs().max()


def test_only_plain_3x3_convolutions_convert():
    assert is_fast_convertible(nn.Conv2d(4, 4, 3, padding=1))
    for conv in (nn.Conv2d(4, 4, 3, padding=1, stride=2), nn.Conv2d(4, 4, 7, padding=3),
                 nn.Conv2d(4, 4, 3, padding=1, groups=2), nn.Conv2d(4, 4, 3),
                 nn.Conv2d(4, 4, 3, padding=1, padding_mode="reflect")):
        assert not is_fast_convertible(conv)
        with pytest.raises(ValueError, match="3x3"):
            FastConv2d(conv)
