"""Exact graph rewrites of ESRT's slow spots: the same function, computed in a cheaper or compile-friendlier way.

Each one equals the plain operation up to float rounding (tests/test_rewrites.py); measured by bench/infer.py
and bench/train_step.py. Used by esrt.runtime.prepare_for_inference and the training twin (esrt.train.twin).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from esrt.model import ESRT


def _folded_index(out_channels: int, in_channels: int, r: int) -> torch.Tensor:
    """Where each weight of a 3x3 conv applied after PixelShuffle(r) goes in the equivalent 3x3 conv before it.

    conv3x3(pixel_shuffle(u, r), w) == pixel_shuffle(conv3x3(u, w'), r), with w' of shape
    (out * r * r, in * r * r, 3, 3) and w' = cat([w.flatten(), 0])[index]: output channel o*r*r + i*r + j
    (sub-pixel i, j) reads input channel c*r*r + i2*r + j2 at low-resolution offset (ky, kx) - 1.
    """
    zero = out_channels * in_channels * 9  # the appended 0
    index = torch.full((out_channels, r, r, in_channels, r, r, 3, 3), zero, dtype=torch.long)
    source = (torch.arange(out_channels)[:, None] * in_channels + torch.arange(in_channels)[None]) * 9  # (o, c)
    for i in range(r):
        for dy in range(3):
            ky, i2 = divmod(i + dy - 1, r)  # high-res row 2y+i+dy-1 is low-res row y+ky, sub-row i2
            for j in range(r):
                for dx in range(3):
                    kx, j2 = divmod(j + dx - 1, r)
                    index[:, i, j, :, i2, j2, ky + 1, kx + 1] = source + dy * 3 + dx
    return index.reshape(out_channels * r * r, in_channels * r * r, 3, 3)


def conv3x3_twice(
    x: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor | None, w2: torch.Tensor, b2: torch.Tensor | None
) -> torch.Tensor:
    """conv2d(conv2d(x, w1, b1, padding=1), w2, b2, padding=1) as one 5x5 conv of x plus a border correction.

    Two 3x3 convs with nothing between them are one 5x5 conv whose kernel is their kernels convolved (computed
    in the weights' dtype, even under autocast) - except next to the border, where the second conv reads the
    first one's zero padding, while the 5x5 conv sees the first conv's output there. That one-pixel ring of
    the intermediate map (rows -1 and H, columns -1 and W) is computed with thin convs and its contribution
    through w2 subtracted from the output's border pixels. Exact up to float rounding, and when the
    intermediate map is wide (the sub-pixel upsampler's 32 -> 32 * r * r channels) several times cheaper.
    x: (B, C0, H, W), w1: (C1, C0, 3, 3), w2: (C2, C1, 3, 3) -> (B, C2, H, W).
    """
    H, W = x.shape[-2:]
    with torch.autocast(x.device.type, enabled=False):
        weight = F.conv2d(w1.transpose(0, 1), w2.flip(2, 3), padding=2).transpose(0, 1)  # (C2, C0, 5, 5)
        bias = None if b1 is None else w2.sum((2, 3)) @ b1
        if b2 is not None:
            bias = b2 if bias is None else bias + b2
    y = F.conv2d(x, weight, bias, padding=2)
    padded = F.pad(x, (2, 2, 2, 2))  # intermediate row r (-1 <= r <= H) reads padded rows r + 1 .. r + 3
    top = F.conv2d(padded[..., 0:3, :], w1, b1)  # (B, C1, 1, W + 2): row -1, columns -1 .. W
    bottom = F.conv2d(padded[..., H + 1 : H + 4, :], w1, b1)  # row H
    left = F.conv2d(padded[..., 1 : H + 3, 0:3], w1, b1)  # (B, C1, H, 1): column -1, rows 0 .. H - 1
    right = F.conv2d(padded[..., 1 : H + 3, W + 1 : W + 4], w1, b1)  # column W
    ring = (
        F.pad(F.conv2d(top, w2[:, :, 0:1]), (0, 0, 0, H - 1))  # reaches output row 0 through w2's top row
        + F.pad(F.conv2d(bottom, w2[:, :, 2:3]), (0, 0, H - 1, 0))
        + F.pad(F.conv2d(F.pad(left, (0, 0, 1, 1)), w2[..., 0:1]), (0, W - 1))  # corners are in top / bottom
        + F.pad(F.conv2d(F.pad(right, (0, 0, 1, 1)), w2[..., 2:3]), (W - 1, 0))
    )
    return y - ring


class _SubPixelFolded(nn.Sequential):
    """ESRT's tail or skip branch, Sequential(Upsampler, Conv3x3[, ReLU]), computing the same function with the
    Conv3x3 moved in front of the Upsampler's last PixelShuffle (weights re-indexed, see _folded_index) and
    there merged with the Upsampler's last conv into one 5x5 conv (conv3x3_twice).

    Same children, so the same parameters and state_dict keys. The branch then runs at low resolution with
    few channels: the (B, 32 * r * r, H, W) map before the last PixelShuffle and the (B, 32, sH, sW) map
    after it are never built (nor, in training, their gradients and the pixel_unshuffle of the backward);
    x4's last stage costs ~5x fewer multiply-adds.
    """

    r: int
    index: torch.Tensor

    def __init__(self, branch: nn.Sequential) -> None:
        super().__init__(*branch)
        upsampler, last, conv = self._parts()
        shuffle = upsampler[-1]
        assert isinstance(shuffle, nn.PixelShuffle)
        assert all(c.kernel_size == (3, 3) and c.padding == (1, 1) for c in (last, conv))
        self.r = shuffle.upscale_factor
        index = _folded_index(conv.out_channels, conv.in_channels, self.r)
        self.register_buffer("index", index, persistent=False)

    def _parts(self) -> tuple[nn.Sequential, nn.Conv2d, nn.Conv2d]:
        """The Upsampler, its last conv and the branch's conv."""
        upsampler, conv = self[0], self[1]
        assert isinstance(upsampler, nn.Sequential) and isinstance(conv, nn.Conv2d)
        last = upsampler[-2]
        assert isinstance(last, nn.Conv2d)
        return upsampler, last, conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        upsampler, last, conv = self._parts()
        for layer in list(upsampler)[:-2]:  # x4: the first conv and PixelShuffle
            x = layer(x)
        w = conv.weight
        weight = torch.cat([w.reshape(-1), w.new_zeros(1)])[self.index]  # (out * r * r, in * r * r, 3, 3)
        bias = None if conv.bias is None else conv.bias.repeat_interleave(self.r * self.r)
        y = conv3x3_twice(x, last.weight, last.bias, weight, bias)  # (B, out * r * r, sH / r, sW / r)
        for layer in list(self)[2:]:  # the skip branch's ReLU (elementwise: commutes with PixelShuffle)
            y = layer(y)
        return F.pixel_shuffle(y, self.r)  # (B, out, sH, sW)


def fold_sub_pixel_convs(model: ESRT) -> ESRT:
    """Replaces model.tail and model.skip in place by _SubPixelFolded equivalents; returns model."""
    if not isinstance(model.tail, _SubPixelFolded):
        model.tail = _SubPixelFolded(model.tail)
    if not isinstance(model.skip, _SubPixelFolded):
        model.skip = _SubPixelFolded(model.skip)
    return model


def unfold_tokens(x: torch.Tensor) -> torch.Tensor:
    """F.unfold(x, 3, padding=1).transpose(1, 2) written as nine shifted copies: (B, C, H, W) -> (B, H*W, C*9).

    Token n = y*W + x holds x[c, y+ky-1, x+kx-1] at c*9 + ky*3 + kx, as F.unfold. Unlike F.unfold (im2col,
    slow on channels-last bf16 input) this is plain indexing that torch.compile fuses with its neighbours.
    """
    B, C, H, W = x.shape
    padded = F.pad(x.permute(0, 2, 3, 1), (0, 0, 1, 1, 1, 1))  # (B, H+2, W+2, C)
    patches = torch.stack([padded[:, i : i + H, j : j + W] for i in range(3) for j in range(3)], dim=-1)
    return patches.reshape(B, H * W, C * 9)  # (B, H, W, C, 9) -> tokens


def fold_tokens(t: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The adjoint of unfold_tokens, F.fold(t.transpose(1, 2), size, 3, padding=1): (B, H*W, C*9) -> (B, C, H, W)
    channels-last, each pixel the sum of the nine token entries that cover it."""
    B, N, D = t.shape
    H, W = size
    parts = t.reshape(B, H, W, D // 9, 9)
    out = sum(
        F.pad(parts[..., i * 3 + j], (0, 0, j, 2 - j, i, 2 - i)) for i in range(3) for j in range(3)
    )  # (B, H+2, W+2, C)
    assert isinstance(out, torch.Tensor)
    return out[:, 1 : H + 1, 1 : W + 1].permute(0, 3, 1, 2)


def bilinear_matrix(n_out: int, n_in: int) -> torch.Tensor:
    """(n_out, n_in) weights of 1-D linear interpolation with align_corners=True: output i samples the input at
    i * (n_in - 1) / (n_out - 1), weight max(0, 1 - |position - j|) on input j (a tent, so two neighbours)."""
    step = (n_in - 1) / (n_out - 1) if n_out > 1 else 0.0
    position = torch.arange(n_out, dtype=torch.float64)[:, None] * step
    return (1 - (position - torch.arange(n_in, dtype=torch.float64)[None]).abs()).clamp(min=0).float()


def upsample_bilinear_matmul(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """F.interpolate(x, size, mode="bilinear", align_corners=True) as two small matmuls, in fp32 even under
    autocast. Unlike the interpolation kernel, whose backward inductor compiles to a slow scatter loop, its
    backward is two matmuls again, so torch.compile can take whole HPBs."""
    rows, cols = bilinear_matrix(size[0], x.shape[2]), bilinear_matrix(size[1], x.shape[3])
    with torch.autocast(x.device.type, enabled=False):
        return torch.einsum("Hh,bchw,Ww->bcHW", rows.to(x.device), x.float(), cols.to(x.device))
