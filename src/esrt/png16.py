"""A 16-bit PNG encoder for grey+alpha, RGB and RGBA pixels, which PIL can only write at 8 bits.

Follows the PNG specification (ISO/IEC 15948): IHDR, optional iCCP, one zlib IDAT with Sub-filtered rows, IEND.
"""

from __future__ import annotations

import struct
import zlib

import numpy as np


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def encode_png16(pixels: np.ndarray, icc: bytes | None, level: int) -> bytes:
    """A 16-bit PNG (grey+alpha, RGB or RGBA), rows Sub-filtered, zlib level `level`; PIL cannot write 16-bit
    colour."""
    H, W, C = pixels.shape
    raw = pixels.astype(">u2").reshape(H, W * C).view(np.uint8).reshape(H, W * C * 2)
    bpp = 2 * C
    rows = np.empty((H, 1 + raw.shape[1]), np.uint8)
    rows[:, 0] = 1  # filter type Sub: byte minus the byte one pixel to the left
    rows[:, 1 : 1 + bpp] = raw[:, :bpp]
    rows[:, 1 + bpp :] = raw[:, bpp:] - raw[:, :-bpp]  # uint8 wraps around, as PNG requires
    colour_type = {2: 4, 3: 2, 4: 6}[C]
    chunks = [_png_chunk(b"IHDR", struct.pack(">IIBBBBB", W, H, 16, colour_type, 0, 0, 0))]
    if icc:
        chunks.append(_png_chunk(b"iCCP", b"ICC profile\x00\x00" + zlib.compress(icc)))
    chunks += [_png_chunk(b"IDAT", zlib.compress(rows.tobytes(), level)), _png_chunk(b"IEND", b"")]
    return b"\x89PNG\r\n\x1a\n" + b"".join(chunks)
