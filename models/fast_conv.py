"""3x3 convolutions computed another way for inference: the same sums, fewer multiplies or a
better-suited kernel.

:class:`FastConv2d` replaces an eval-mode 3x3, stride-1, padding-1 ``nn.Conv2d`` and has three
ways to compute it:

* ``direct``: the convolution torch runs (oneDNN on a CPU);
* ``winograd``: Winograd F(4x4, 3x3) (Lavin and Gray, 2016): each 6x6 input tile and each 3x3
  kernel are transformed once, the convolution becomes 36 matrix products over channels, and a
  4x4 output tile costs 36 instead of 144 multiplies per channel pair. In float32 the result
  differs from the direct one by about 1e-5 of the output's range;
* ``gemm``: im2col and one matrix product, for small maps, where a direct convolution spends
  its time on the weights (megabytes of them in the dense motion's widest layers).

Which is fastest depends on the channels, the map size, the batch and the machine, so on a CPU
each layer times the ways it can use on the first input of each shape (four calls each, a
one-off cost) and keeps the fastest, as ``torch.backends.cudnn.benchmark`` does on a GPU; another
way must beat ``direct`` by ``MARGIN`` to be kept, and layers with less work per image than
``MIN_WORK`` always run ``direct``: there the ways differ by less than the timing noise. On
other devices it always runs ``direct`` (cuDNN chooses its own algorithms). docs/speed.md has
what it gives.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from torch import nn

_F64 = torch.float64
# F(4x4, 3x3) with interpolation points 0, 1, -1, 2, -2 and infinity: input transform B^T,
# kernel transform G and output transform A^T.
_BT = torch.tensor([[4, 0, -5, 0, 1, 0],
                    [0, -4, -4, 1, 1, 0],
                    [0, 4, -4, -1, 1, 0],
                    [0, -2, -1, 2, 1, 0],
                    [0, 2, -1, -2, 1, 0],
                    [0, 4, 0, -5, 0, 1]], dtype=_F64)
_G = torch.tensor([[1 / 4, 0, 0],
                   [-1 / 6, -1 / 6, -1 / 6],
                   [-1 / 6, 1 / 6, -1 / 6],
                   [1 / 24, 1 / 12, 1 / 6],
                   [1 / 24, -1 / 12, 1 / 6],
                   [0, 0, 1]], dtype=_F64)
_AT = torch.tensor([[1, 1, 1, 1, 1, 0],
                    [0, 1, -1, 2, -2, 0],
                    [0, 1, 1, 4, 4, 0],
                    [0, 1, -1, 8, -8, 1]], dtype=_F64)
TILE = 4  # output tile side
INPUT_TILE = TILE + 2


def is_fast_convertible(conv: nn.Module) -> bool:
    """Whether ``conv`` is a plain 3x3, stride-1, padding-1 convolution :class:`FastConv2d`
    reproduces."""
    return type(conv) is nn.Conv2d and conv.kernel_size == (3, 3) and conv.stride == (1, 1) \
        and conv.padding == (1, 1) and conv.dilation == (1, 1) and conv.groups == 1 \
        and conv.padding_mode == "zeros"


class FastConv2d(nn.Module):
    """An eval-mode 3x3 convolution (see the module docstring) with the weights of ``conv``.
    ``choices`` maps each input shape (batch, height, width) seen on a CPU to the way chosen
    for it."""

    GEMM_MAX_PIXELS = 256  # im2col is a candidate up to 16x16 maps
    MIN_WORK = 100_000_000  # multiply-adds per image below which only direct is a candidate
    MARGIN = 0.9  # another way is kept when it takes at most this share of direct's time
    TIMED_CALLS = 3  # per way; the fastest call counts

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        if not is_fast_convertible(conv):
            raise ValueError(f"not a 3x3, stride-1, padding-1 convolution: {conv}")
        weight = conv.weight.detach()
        self.out_channels = conv.out_channels
        # C_out x C_in*9, the im2col layout; 2-D, so that a channels-last conversion of the
        # network leaves it be
        self.weight = nn.Parameter(weight.reshape(conv.out_channels, -1).clone(),
                                   requires_grad=False)
        bias = conv.bias.detach().clone() if conv.bias is not None \
            else weight.new_zeros(conv.out_channels)
        self.bias = nn.Parameter(bias, requires_grad=False)
        self._winograd_weight: torch.Tensor | None = None  # made on first use
        self.register_buffer("input_transform", torch.kron(_BT, _BT).to(weight.dtype))
        self.register_buffer("output_transform", torch.kron(_AT, _AT).to(weight.dtype))
        self.in_channels = conv.in_channels
        self.choices: dict[tuple[int, int, int], str] = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu":
            return self._direct(x)
        shape = (x.shape[0], x.shape[2], x.shape[3])
        choice = self.choices.get(shape)
        if choice is None:
            choice = self.choices[shape] = self._fastest(x)
        return getattr(self, "_" + choice)(x)

    def candidates(self, height: int, width: int) -> list[str]:
        """The ways worth timing for a map of this size."""
        ways = ["direct"]
        if height * width * self.in_channels * self.out_channels * 9 < self.MIN_WORK:
            return ways
        if height % TILE == 0 and width % TILE == 0:
            ways.append("winograd")
        if height * width <= self.GEMM_MAX_PIXELS:
            ways.append("gemm")
        return ways

    def _fastest(self, x: torch.Tensor) -> str:
        ways = self.candidates(x.shape[2], x.shape[3])
        if len(ways) == 1:
            return ways[0]
        seconds = {}
        for way in ways:
            compute = getattr(self, "_" + way)
            compute(x)  # the first call of a way pays for allocations and kernel set-up
            times = []
            for _ in range(self.TIMED_CALLS):
                start = time.perf_counter()
                compute(x)
                times.append(time.perf_counter() - start)
            seconds[way] = min(times) / (1 if way == "direct" else self.MARGIN)
        return min(seconds, key=seconds.__getitem__)

    def _direct(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight.view(self.out_channels, -1, 3, 3), self.bias, padding=1)

    def winograd_weight(self) -> torch.Tensor:
        """36 x C_in x C_out: G w G^T for every channel pair, computed in float64 on first use
        (it is 4x the size of the weights, and most layers never need it)."""
        if self._winograd_weight is None or self._winograd_weight.device != self.weight.device:
            weight = self.weight.view(self.out_channels, -1, 3, 3)
            winograd = torch.einsum("ai,ocij,bj->abco", _G.to(weight.device),
                                    weight.to(_F64), _G.to(weight.device))
            self._winograd_weight = winograd.reshape(INPUT_TILE ** 2, *winograd.shape[2:]) \
                .to(weight.dtype).contiguous()
        return self._winograd_weight

    def _winograd(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        rows, cols = h // TILE, w // TILE
        padded = F.pad(x, (1, 1, 1, 1)).permute(0, 2, 3, 1)  # N x H+2 x W+2 x C
        # 36 x (tiles * C): the 6x6 tiles at stride 4, one row per position in the tile
        tiles = padded.unfold(1, INPUT_TILE, TILE).unfold(2, INPUT_TILE, TILE)
        tiles = tiles.permute(4, 5, 0, 1, 2, 3).reshape(INPUT_TILE ** 2, -1)
        transformed = (self.input_transform @ tiles).view(INPUT_TILE ** 2, n * rows * cols, c)
        products = torch.bmm(transformed, self.winograd_weight())  # 36 x tiles x C_out
        out = self.output_transform @ products.view(INPUT_TILE ** 2, -1)
        out = out.view(TILE, TILE, n, rows, cols, self.out_channels)
        out = out.permute(2, 3, 0, 4, 1, 5).reshape(n, h, w, self.out_channels) + self.bias
        return out.permute(0, 3, 1, 2)  # N x C_out x H x W, channels-last in memory

    def _gemm(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        columns = F.unfold(x, 3, padding=1)  # N x C*9 x H*W
        out = torch.matmul(self.weight, columns)
        return (out + self.bias[:, None]).view(n, self.out_channels, h, w)
