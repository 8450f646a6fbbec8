"""Blob payload encoding: one flag byte, then raw bytes or a zstd frame."""

from __future__ import annotations

import threading

import zstandard

from medvault.errors import IntegrityError

RAW = 0
ZSTD = 1

_local = threading.local()


def _compressor(level: int) -> zstandard.ZstdCompressor:
    cache: dict[int, zstandard.ZstdCompressor] | None = getattr(_local, "compressors", None)
    if cache is None:
        cache = _local.compressors = {}
    comp = cache.get(level)
    if comp is None:
        comp = cache[level] = zstandard.ZstdCompressor(level=level, write_content_size=True)
    return comp


def _decompressor() -> zstandard.ZstdDecompressor:
    dec: zstandard.ZstdDecompressor | None = getattr(_local, "decompressor", None)
    if dec is None:
        dec = _local.decompressor = zstandard.ZstdDecompressor()
    return dec


def encode(data: bytes, level: int) -> bytes:
    """zstd when it shrinks the data, raw otherwise (already-compressed scans, JPEGs)."""
    packed = _compressor(level).compress(data)
    if len(packed) + 1 < len(data):
        return bytes([ZSTD]) + packed
    return bytes([RAW]) + data


# zstandard allocates a frame's declared content size before it decompresses anything, so
# the declaration is checked first. zstd's format bounds it: a block yields at most 128 KiB
# and takes at least 4 bytes (an RLE block), so no honest frame holds more than 32,768 times
# its own length.
MAX_RATIO = 32768
# The largest payload medvault seals without knowing its raw length: a WAL segment, at most
# 1 GiB. Blobs are checked against the raw length their index entry gives.
MAX_SEALED_PAYLOAD = 1 << 30


def decode(payload: bytes, raw_length: int | None = None) -> bytes:
    """The data of a payload; `raw_length`, when known, is the length it must have."""
    if not payload:
        raise IntegrityError("empty blob payload")
    flag = payload[0]
    if flag == RAW:
        data = payload[1:]
    elif flag == ZSTD:
        data = _decompress(memoryview(payload)[1:], raw_length)
    else:
        raise IntegrityError(f"unknown blob compression flag {flag}")
    if raw_length is not None and len(data) != raw_length:
        raise IntegrityError(f"blob is {len(data)} bytes, its index entry says {raw_length}")
    return data


def _decompress(frame: memoryview, raw_length: int | None) -> bytes:
    try:
        size = zstandard.frame_content_size(frame)
        if size < 0:
            raise IntegrityError("blob's zstd frame does not declare its size")
        limit = MAX_SEALED_PAYLOAD if raw_length is None else raw_length
        if size > limit or size > MAX_RATIO * len(frame):
            raise IntegrityError(
                f"blob's zstd frame declares {size} bytes from {len(frame)} "
                f"(at most {min(limit, MAX_RATIO * len(frame))} possible)"
            )
        data: bytes = _decompressor().decompress(frame, max_output_size=size)
    except zstandard.ZstdError as exc:
        raise IntegrityError(f"blob does not decompress: {exc}") from exc
    return data
