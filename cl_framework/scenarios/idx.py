"""Reader for the IDX format used by MNIST-style datasets.

An IDX file is a 4-byte magic number (two zero bytes, a type code, the number of dimensions), one
big-endian uint32 per dimension, then the data. Files may be gzip-compressed or raw; the reader
detects gzip by its signature, so a misnamed file still reads. Every problem (missing, corrupt,
truncated, wrong kind) is reported as one :class:`DataError` naming the file, because a half-read
dataset would otherwise surface much later as a shape error inside training.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import torch

from cl_framework.errors import DataError
from cl_framework.scenarios import decoded_cache

IDX_LABELS_MAGIC = 0x00000801
"""uint8 data with one dimension: a label file."""
IDX_IMAGES_MAGIC = 0x00000803
"""uint8 data with three dimensions (N, H, W): an image file."""

_UINT8_TYPE_CODE = 0x08
_CACHE_KIND = "idx"
_GZIP_SIGNATURE = b"\x1f\x8b"
_FIX = (
    "replace it with an intact copy of the original file "
    "(delete it and the loader downloads it again)"
)


def read_idx(path: str | Path, *, expected_magic: int | None = None) -> np.ndarray:
    """Read an IDX file (raw or gzip) into a uint8 array shaped by its header dimensions.

    ``expected_magic`` guards against passing a label file where images are expected. A file
    decoded before is read back from :mod:`~cl_framework.scenarios.decoded_cache` (keyed by
    the file's bytes, so the result is the same array either way).
    """
    path = Path(path)
    try:
        blob = path.read_bytes()
    except OSError as exc:
        raise DataError(str(path), f"cannot be read ({exc.strerror or exc})", fix=_FIX) from exc
    key = decoded_cache.content_key(blob)
    cached = decoded_cache.load(_CACHE_KIND, key)
    if cached is not None and _fits(cached, expected_magic):
        return cached
    array = _decode(path, blob, expected_magic)
    decoded_cache.store(_CACHE_KIND, key, array)
    return array


def _fits(array: np.ndarray, expected_magic: int | None) -> bool:
    """Whether a cached array is what decoding would give: uint8, with the expected rank."""
    ndim = None if expected_magic is None else expected_magic & 0xFF
    return array.dtype == np.uint8 and (ndim is None or array.ndim == ndim)


def _decode(path: Path, blob: bytes, expected_magic: int | None) -> np.ndarray:
    """Validate and decode the bytes of an IDX file (see :func:`read_idx`)."""
    if blob[:2] == _GZIP_SIGNATURE:
        data, stream_complete = _gunzip(path, blob)
    else:
        data, stream_complete = blob, True

    if len(data) < 4:
        raise DataError(
            str(path), f"truncated: expected at least 4 header bytes, got {len(data)}", fix=_FIX
        )
    magic = int.from_bytes(data[:4], "big")
    type_code, ndim = data[2], data[3]
    if data[:2] != b"\x00\x00" or type_code != _UINT8_TYPE_CODE or ndim == 0:
        raise DataError(str(path), f"not an uint8 IDX file (magic number 0x{magic:08x})", fix=_FIX)
    if expected_magic is not None and magic != expected_magic:
        raise DataError(
            str(path),
            f"wrong IDX magic number 0x{magic:08x}, expected 0x{expected_magic:08x} "
            f"({_describe_magic(expected_magic)})",
            fix="check that the file names were not swapped, or " + _FIX,
        )

    header_len = 4 + 4 * ndim
    if len(data) < header_len:
        raise DataError(
            str(path), f"truncated: expected {header_len} header bytes, got {len(data)}", fix=_FIX
        )
    dims = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    expected = int(np.prod(dims, dtype=np.int64))
    got = len(data) - header_len
    if got < expected:
        raise DataError(str(path), f"truncated: expected {expected} bytes, got {got}", fix=_FIX)
    if got > expected:
        raise DataError(
            str(path),
            f"corrupt: header dimensions {dims} need {expected} bytes, file holds {got}",
            fix=_FIX,
        )
    if not stream_complete:
        # The payload is complete but the gzip trailer (CRC, length) is missing.
        raise DataError(str(path), "truncated gzip archive (missing end of stream)", fix=_FIX)
    # Copy so the array owns writable memory (torch.from_numpy warns on read-only buffers).
    return (
        np.frombuffer(data, dtype=np.uint8, count=expected, offset=header_len).reshape(dims).copy()
    )


def read_idx_images(path: str | Path) -> torch.Tensor:
    """Read an IDX image file as a uint8 tensor of shape (N, 1, H, W)."""
    array = read_idx(path, expected_magic=IDX_IMAGES_MAGIC)
    return torch.from_numpy(array).unsqueeze(1)


def read_idx_labels(path: str | Path) -> torch.Tensor:
    """Read an IDX label file as an int64 tensor of shape (N,)."""
    array = read_idx(path, expected_magic=IDX_LABELS_MAGIC)
    return torch.from_numpy(array).to(torch.int64)


def _gunzip(path: Path, blob: bytes) -> tuple[bytes, bool]:
    """Decompress all gzip members; return the data and whether the last stream ended properly.

    zlib (rather than the gzip module) hands back what was decompressed before a truncation, so
    the caller can report how many bytes are missing instead of a bare EOFError.
    """
    chunks: list[bytes] = []
    remaining = blob
    while remaining:
        inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
        try:
            chunks.append(inflater.decompress(remaining))
            chunks.append(inflater.flush())
        except zlib.error as exc:
            raise DataError(str(path), f"corrupt gzip data ({exc})", fix=_FIX) from exc
        if not inflater.eof:
            return b"".join(chunks), False
        remaining = inflater.unused_data
        if remaining and remaining[:2] != _GZIP_SIGNATURE:
            if remaining.strip(b"\x00"):
                raise DataError(
                    str(path), "corrupt: unexpected bytes after the gzip stream", fix=_FIX
                )
            break  # zero padding after the last member, as tape-style writers produce
    return b"".join(chunks), True


def _describe_magic(magic: int) -> str:
    return {IDX_LABELS_MAGIC: "a label file", IDX_IMAGES_MAGIC: "an image file"}.get(
        magic, "uint8 IDX"
    )
