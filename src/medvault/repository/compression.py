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


def decode(payload: bytes, raw_length: int | None = None) -> bytes:
    if not payload:
        raise IntegrityError("empty blob payload")
    flag = payload[0]
    if flag == RAW:
        return payload[1:]
    if flag == ZSTD:
        try:
            if raw_length is not None:
                return _decompressor().decompress(
                    memoryview(payload)[1:], max_output_size=raw_length
                )
            return _decompressor().decompress(memoryview(payload)[1:])
        except zstandard.ZstdError as exc:
            raise IntegrityError(f"blob does not decompress: {exc}") from exc
    raise IntegrityError(f"unknown blob compression flag {flag}")
