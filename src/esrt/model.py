"""The ESRT network: a lightweight CNN backbone (LCB) followed by a lightweight transformer backbone (LTB).

Follows Lu et al., "Transformer for Single Image Super-Resolution" (CVPR-W 2022, arXiv 2108.11084),
sections 3.1-3.3, numerically identical to the reference code luissen/ESRT (docs/architecture.md).
The attention's run-time settings (kernel, chunk cap, precision) are set from outside by configure_attention.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

SCALES = (2, 3, 4)
WIDTH = 32  # channels of the CNN everywhere
TOKEN_DIM = WIDTH * 9  # one token is a 3x3 neighbourhood of the 32-channel map
HEADS = 8
SPLITS = 4  # Feature Split: the token sequence is cut into 4 consecutive chunks
ATTENTION_SCALE = 1 / 6  # (288 / 8) ** -0.5 as in the reference code, not head_dim ** -0.5


def _scalar() -> nn.Parameter:
    """A learnable scalar initialised to 1 (the adaptive weights of the paper's residual scaling)."""
    return nn.Parameter(torch.ones(1))


class RU(nn.Module):
    """Residual unit: Reduction -> PReLU -> Expansion, with adaptive residual scaling a*x + b*body(x)."""

    def __init__(self, channels: int = WIDTH) -> None:
        super().__init__()
        self.reduction = nn.Conv2d(channels, channels // 2, 3, padding=1)
        self.act = nn.PReLU(channels // 2, init=0.25)
        self.expansion = nn.Conv2d(channels // 2, channels, 3, padding=1)
        self.a = _scalar()
        self.b = _scalar()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.a * x + self.b * self.expansion(self.act(self.reduction(x)))


class CA(nn.Module):
    """Channel attention (squeeze-and-excitation): pool -> 1x1 (32->2) -> ReLU -> 1x1 (2->32) -> sigmoid."""

    def __init__(self, channels: int = WIDTH, reduction: int = 16) -> None:
        super().__init__()
        self.squeeze = nn.Conv2d(channels, channels // reduction, 1)
        self.excite = nn.Conv2d(channels // reduction, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = F.adaptive_avg_pool2d(x, 1)  # (B, 32, 1, 1)
        w = torch.sigmoid(self.excite(F.relu(self.squeeze(w))))
        return x * w


class ARFB(nn.Module):
    """Adaptive residual feature block: two RUs, 1x1 fusion of both, CA, 3x3 conv, adaptive residual."""

    def __init__(self, channels: int = WIDTH) -> None:
        super().__init__()
        self.ru1 = RU(channels)
        self.ru2 = RU(channels)
        self.fusion = nn.Conv2d(2 * channels, channels, 1, bias=False)
        self.ca = CA(channels)
        self.conv = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.c = _scalar()  # weighs RU2's output
        self.d = _scalar()  # weighs RU1's output
        self.e = _scalar()  # weighs the block input
        self.f = _scalar()  # weighs the block body

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r1 = self.ru1(x)
        r2 = self.ru2(r1)
        t = torch.cat([self.c * r2, self.d * r1], dim=1)  # (B, 64, H, W)
        t = F.relu(self.fusion(t))  # (B, 32, H, W)
        t = F.relu(self.conv(self.ca(t)))
        return self.e * x + self.f * t


def upsample_bilinear(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resizing of (B, C, h, w) to (B, C, *size) with align_corners=True, as the reference code."""
    return F.interpolate(x, size=size, mode="bilinear", align_corners=True)


class HFM(nn.Module):
    """High-frequency filtering module: x minus the bilinear upsampling of its 2x2 average pooling."""

    def __init__(self) -> None:
        super().__init__()
        self.upsample = upsample_bilinear  # the training twin (esrt.train.twin) swaps in the same maths as matmuls

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (high, low): the high-frequency map at x's size and the pooled map at half size."""
        low = F.avg_pool2d(x, 2)  # (B, C, H // 2, W // 2)
        return x - self.upsample(low, (x.shape[2], x.shape[3])), low


class HPB(nn.Module):
    """High preserving block: ARFB, HFM split, a shared ARFB run 5 times on the low band, fusion, CA, ARFB."""

    def __init__(self, channels: int = WIDTH, low_repeats: int = 5) -> None:
        super().__init__()
        self.arfb_in = ARFB(channels)
        self.hfm = HFM()
        self.arfb_low = ARFB(channels)  # one module applied low_repeats times (weight sharing)
        self.arfb_high = ARFB(channels)
        self.fusion = nn.Conv2d(2 * channels, channels, 1, bias=False)
        self.ca = CA(channels)
        self.arfb_out = ARFB(channels)
        self.low_repeats = low_repeats

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = self.arfb_in(x)
        high, low = self.hfm(x1)
        for _ in range(self.low_repeats):
            low = self.arfb_low(low)
        high = self.arfb_high(high)
        t = torch.cat([self.hfm.upsample(low, (x1.shape[2], x1.shape[3])), high], dim=1)  # (B, 64, H, W)
        t = self.ca(F.relu(self.fusion(t)))  # (B, 32, H, W)
        return self.arfb_out(t) + x


class LCB(nn.Module):
    """Lightweight CNN backbone: three HPBs whose outputs are concatenated and fused by a 3x3 conv."""

    def __init__(self, channels: int = WIDTH, blocks: int = 3) -> None:
        super().__init__()
        self.hpbs = nn.ModuleList(HPB(channels) for _ in range(blocks))
        self.fusion = nn.Conv2d(blocks * channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outputs = []
        for hpb in self.hpbs:
            x = hpb(x)
            outputs.append(x)
        return self.fusion(torch.cat(outputs, dim=1))  # (B, 96, H, W) -> (B, 32, H, W)


AttentionKernel = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
"""softmax(q k^T * ATTENTION_SCALE) v for q, k, v of shape (B, heads, L, d): attention within each chunk."""


def sdpa_kernel(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """The fused kernel (scaled_dot_product_attention), which never materialises the (L, L) matrix."""
    return F.scaled_dot_product_attention(q, k, v, scale=ATTENTION_SCALE)


def naive_kernel(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """The explicit softmax(QK^T)V oracle (tests): materialises every (L, L) matrix."""
    return torch.softmax(q @ k.transpose(-2, -1) * ATTENTION_SCALE, dim=-1) @ v


def _attend_in_chunks(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, segments: list[tuple[int, int, int]], kernel: AttentionKernel
) -> torch.Tensor:
    """Attention inside chunks: each (start, stop, count) segment of the token axis is cut into count equal
    consecutive chunks, and every token attends only to the tokens of its own chunk.

    q, k, v: (B, heads, N, d). Each segment goes through one kernel call on (B, heads * count, L, d).
    """
    B, heads, N, d = q.shape
    outputs = []
    for start, stop, count in segments:
        if stop == start:
            continue
        qc, kc, vc = (
            t[:, :, start:stop].reshape(B, heads * count, (stop - start) // count, d) for t in (q, k, v)
        )  # (B, heads * count, L, d): 4-D, as the fused CPU kernel requires
        outputs.append(kernel(qc, kc, vc).reshape(B, heads, stop - start, d))
    return outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=2)  # (B, heads, N, d)


def feature_split_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, splits: int = SPLITS, kernel: AttentionKernel = sdpa_kernel
) -> torch.Tensor:
    """The paper's Feature Split: attention inside consecutive token chunks of length N // splits, plus a chunk
    of the last N % splits tokens (the reference's quirk). q, k, v: (B, heads, N, d)."""
    N = q.shape[2]
    size = N // splits
    if size == 0:
        raise ValueError(f"feature split needs at least {splits} tokens, got {N}")
    return _attend_in_chunks(q, k, v, [(0, size * splits, splits), (size * splits, N, 1)], kernel)


def blocked_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, max_chunk: int, kernel: AttentionKernel = sdpa_kernel
) -> torch.Tensor:
    """Not the reference: attention inside ceil(N / max_chunk) consecutive chunks of near-equal length (they
    differ by at most one token). The fast inference mode: attention costs O(N * max_chunk), not O(N^2 / 4);
    tokens are in raster order, so each chunk is a band of image rows, as in the Feature Split."""
    N = q.shape[2]
    chunks = -(-N // max_chunk)
    size, longer = divmod(N, chunks)  # `longer` chunks of size + 1 first, then chunks of size
    cut = longer * (size + 1)
    return _attend_in_chunks(q, k, v, [(0, cut, longer), (cut, N, chunks - longer)], kernel)


@dataclass(frozen=True)
class AttentionSettings:
    """How EMHA computes its attention at run time; none of it is a weight. The defaults are the paper's.

    kernel: the attention inside each chunk (sdpa_kernel; naive_kernel as the tests' oracle; bf16 products in
      the CPU training twin).
    max_chunk: None for the paper's Feature Split; else chunks of at most max_chunk tokens wherever the
      split's chunks would be longer (blocked_attention, not the reference: the fast inference mode).
    low_precision: False keeps the attention in fp32 even under autocast (more precise, and the CPU bf16
      backward is slow at head width 18); True computes it in the autocast dtype (bf16 inference: ~1.5x
      faster than fp32 on CPUs with AMX).
    """

    kernel: AttentionKernel = sdpa_kernel
    max_chunk: int | None = None
    low_precision: bool = False

    def __post_init__(self) -> None:
        if self.max_chunk is not None and self.max_chunk < 1:
            raise ValueError(f"max_chunk must be a positive number of tokens, got {self.max_chunk}")


class EMHA(nn.Module):
    """Efficient multi-head attention: Reduction, QKV, Feature Split attention per chunk, Expansion."""

    def __init__(self, dim: int = TOKEN_DIM, heads: int = HEADS, splits: int = SPLITS) -> None:
        super().__init__()
        self.heads = heads
        self.splits = splits
        self.reduction = nn.Linear(dim, dim // 2, bias=False)
        self.qkv = nn.Linear(dim // 2, 3 * (dim // 2), bias=False)
        self.expansion = nn.Linear(dim // 2, dim)
        self.settings = AttentionSettings()  # set by configure_attention

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Feature Split attention, or blocked attention when max_chunk is set and the chunks would be longer."""
        kernel, max_chunk = self.settings.kernel, self.settings.max_chunk
        if max_chunk is not None and q.shape[2] // self.splits > max_chunk:
            return blocked_attention(q, k, v, max_chunk, kernel)
        return feature_split_attention(q, k, v, self.splits, kernel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, _ = x.shape
        qkv = self.qkv(self.reduction(x))  # (B, N, 432)
        qkv = qkv.reshape(B, N, 3, self.heads, -1).permute(2, 0, 3, 1, 4)  # (3, B, 8, N, 18)
        if self.settings.low_precision:  # in the autocast dtype
            out = self.attend(*qkv.unbind(0))
        else:  # in fp32, even under autocast
            with torch.autocast(x.device.type, enabled=False):
                out = self.attend(*qkv.float().unbind(0)).to(qkv.dtype)  # back to the dtype it came in (half, bf16)
        out = out.transpose(1, 2).reshape(B, N, -1)  # (B, N, 144), heads concatenated head-major
        return self.expansion(out)  # (B, N, 288)


class ET(nn.Module):
    """Efficient transformer (pre-norm) on 3x3 unfolded tokens; folded back by summing the overlaps."""

    def __init__(self, channels: int = WIDTH, mlp_ratio: float = 0.25) -> None:
        super().__init__()
        dim = channels * 9
        self.norm1 = nn.LayerNorm(dim)
        self.emha = EMHA(dim)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        t = F.unfold(x, 3, padding=1).transpose(1, 2)  # (B, N, 288), raster order
        t = t + self.emha(self.norm1(t))
        t = t + self.mlp(self.norm2(t))
        return F.fold(t.transpose(1, 2), (H, W), 3, padding=1)  # (B, 32, H, W), overlaps summed


class LTB(nn.Module):
    """Lightweight transformer backbone: one ET, a 3x3 conv, and g*F0 + h*that."""

    def __init__(self, channels: int = WIDTH) -> None:
        super().__init__()
        self.et = ET(channels)
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)
        self.g = _scalar()  # weighs the shallow features F0
        self.h = _scalar()  # weighs the transformer branch

    def forward(self, x: torch.Tensor, shallow: torch.Tensor) -> torch.Tensor:
        return self.g * shallow + self.h * self.conv(self.et(x))


class Upsampler(nn.Sequential):
    """Sub-pixel upsampling: conv + PixelShuffle, once for x2 and x3, twice (x2 each) for x4."""

    def __init__(self, scale: int, channels: int = WIDTH) -> None:
        steps = [2, 2] if scale == 4 else [scale]
        layers: list[nn.Module] = []
        for step in steps:
            layers += [nn.Conv2d(channels, channels * step * step, 3, padding=1), nn.PixelShuffle(step)]
        super().__init__(*layers)


class ESRT(nn.Module):
    """ESRT: shallow conv, LCB, LTB, conv, then upsampled reconstruction plus an upsampled skip branch.

    Input (B, 3, H, W) in [0, 1] with H, W >= 2; output (B, 3, scale*H, scale*W), not clamped.
    """

    def __init__(self, scale: int = 4, *, channels: int = WIDTH) -> None:
        super().__init__()
        if scale not in SCALES:
            raise ValueError(f"scale must be one of {SCALES}, got {scale!r}")
        self.scale = scale
        self.head = nn.Conv2d(3, channels, 3, padding=1)
        self.lcb = LCB(channels)
        self.ltb = LTB(channels)
        self.body_conv = nn.Conv2d(channels, channels, 3, padding=1)
        self.tail = nn.Sequential(Upsampler(scale, channels), nn.Conv2d(channels, 3, 3, padding=1))
        self.skip = nn.Sequential(
            Upsampler(scale, channels), nn.Conv2d(channels, 3, 3, padding=1, bias=False), nn.ReLU()
        )

    def check_input(self, x: torch.Tensor) -> None:
        """Raises ValueError unless x is a (B, 3, H, W) floating tensor of the model's dtype, H, W >= 2."""
        if not isinstance(x, torch.Tensor):
            raise ValueError(f"expected a torch.Tensor, got {type(x).__name__}")
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"expected input of shape (B, 3, H, W), got {tuple(x.shape)}")
        if x.shape[2] < 2 or x.shape[3] < 2:
            raise ValueError(f"expected H, W >= 2, got {x.shape[2]}x{x.shape[3]}")
        expected = self.head.weight.dtype
        if x.dtype != expected:
            raise ValueError(f"expected a {expected} tensor with values in [0, 1], got {x.dtype}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        shallow = self.head(x)  # F0: (B, 32, H, W)
        deep = self.body_conv(self.ltb(self.lcb(shallow), shallow))
        return self.tail(deep) + self.skip(shallow)  # (B, 3, sH, sW)


def configure_attention(
    model: nn.Module,
    *,
    kernel: AttentionKernel = sdpa_kernel,
    max_chunk: int | None = None,
    low_precision: bool = False,
) -> None:
    """Sets the attention of every EMHA in model (see AttentionSettings); with no options, back to the paper's.

    The one place where the attention's run-time settings change: esrt.runtime.prepare_for_inference (chunk
    cap, bf16), the training twin (bf16 kernel) and the tests (naive_kernel) go through it.
    """
    settings = AttentionSettings(kernel=kernel, max_chunk=max_chunk, low_precision=low_precision)
    for module in model.modules():
        if isinstance(module, EMHA):
            module.settings = settings
