"""Payload framing and LZ4 block compression: the pure-Python reference of
``wukong_native.compress`` / ``decompress`` / ``is_compressible``.

A frame is self-describing::

    [tag: u8][original length: u64 little-endian][payload]
     tag 0 = raw  (payload is the data itself)
     tag 1 = lz4  (payload is one LZ4 block, no size prefix, no checksum)

Deciding raw vs lz4:

1. data shorter than ``min_size`` is raw;
2. data longer than ``PROBE_MIN`` bytes is first probed (``is_compressible``): compress
   ``PROBE_WINDOWS`` windows of ``PROBE_WINDOW`` bytes, evenly spaced from the first byte
   to the last, each as its own block; unless they shrink below 90% in total, it is raw;
3. otherwise the whole input is compressed and kept only if below 90% of the input.

The decision compares compressed sizes, so the compressed bytes must be identical in both
implementations: ``_lz4_compress_block`` is a port of lz4_flex 0.14.0's block encoder (the
greedy LZ4 "fast" algorithm: a 4096-entry hash table of last positions, a skip step that
grows with misses, backward match extension). This module is the test oracle: obvious
rather than fast.
"""

from __future__ import annotations

TAG_RAW = 0
TAG_LZ4 = 1
HEADER_LEN = 9
PROBE_WINDOW = 2048
PROBE_WINDOWS = 4
PROBE_MIN = 64 * 1024

_MAX_LZ4_RATIO = 255  # LZ4 cannot expand more; a header claiming more is corrupt
_MINMATCH = 4
_MFLIMIT = 12  # the last match starts at least 12 bytes before the end
_END_OFFSET = 6  # matches end 6 bytes before the end (lz4_flex: LAST_LITERALS + 1)
_MAX_DISTANCE = 0xFFFF
_SKIP_SHIFT = 5  # lz4_flex INCREASE_STEPSIZE_BITSHIFT
_MASK64 = (1 << 64) - 1


def _as_bytes(data: bytes | bytearray | memoryview) -> bytes:
    view = memoryview(data)
    if view.format != "B" or view.ndim != 1:
        view = view.cast("B")  # raw bytes of any C-contiguous buffer (e.g. float64 arrays)
    return view.tobytes()


def _pays_off(compressed: int, original: int) -> bool:
    return compressed * 10 < original * 9


def _probe_starts(n: int) -> list[int]:
    span = n - PROBE_WINDOW
    return [i * span // (PROBE_WINDOWS - 1) for i in range(PROBE_WINDOWS)]


def is_compressible(data: bytes | bytearray | memoryview) -> bool:
    """The cheap probe: would LZ4 shrink ``data`` below 90%? Reads at most 8 KiB."""
    src = _as_bytes(data)
    if len(src) <= PROBE_WINDOWS * PROBE_WINDOW:
        return _pays_off(len(_lz4_compress_block(src)), len(src))
    compressed = sum(len(_lz4_compress_block(src[s : s + PROBE_WINDOW])) for s in _probe_starts(len(src)))
    return _pays_off(compressed, PROBE_WINDOWS * PROBE_WINDOW)


def _header(tag: int, length: int) -> bytes:
    return bytes([tag]) + length.to_bytes(8, "little")


def compress(data: bytes | bytearray | memoryview, *, min_size: int = 1024) -> bytes:
    """Frame ``data``, LZ4-compressed when that pays (see the module docstring)."""
    src = _as_bytes(data)
    n = len(src)
    if n >= min_size and (n <= PROBE_MIN or is_compressible(src)):
        block = _lz4_compress_block(src)
        if _pays_off(len(block), n):
            return _header(TAG_LZ4, n) + block
    return _header(TAG_RAW, n) + src


def decompress(frame: bytes | memoryview) -> bytes:
    """The original bytes of ``frame``; ``ValueError`` if it is corrupt or truncated."""
    frame = _as_bytes(frame)
    if len(frame) < HEADER_LEN:
        raise ValueError(f"corrupt frame: {len(frame)} bytes, shorter than the 9-byte header")
    tag, length, payload = (
        frame[0],
        int.from_bytes(frame[1:HEADER_LEN], "little"),
        frame[9:],
    )
    if tag == TAG_RAW:
        if length != len(payload):
            raise ValueError(f"corrupt frame: raw payload has {len(payload)} bytes, header says {length}")
        return payload
    if tag != TAG_LZ4:
        raise ValueError(f"corrupt frame: unknown tag {tag} (expected 0 = raw or 1 = lz4)")
    if not payload:
        raise ValueError("corrupt frame: empty lz4 payload")
    if length > len(payload) * _MAX_LZ4_RATIO:
        raise ValueError(f"corrupt frame: header claims {length} bytes from {len(payload)} bytes of lz4 data")
    out = _lz4_decompress_block(payload, length)
    if len(out) != length:
        raise ValueError(f"corrupt frame: lz4 data decodes to {len(out)} bytes, header says {length}")
    return bytes(out)


# -- LZ4 block encoder (port of lz4_flex 0.14.0 block::compress, 64-bit little-endian) --


def _write_length(out: bytearray, n: int) -> None:
    while n >= 0xFF:
        out.append(0xFF)
        n -= 0xFF
    out.append(n)


def _last_literals(out: bytearray, src: bytes, start: int) -> None:
    lit_len = len(src) - start
    out.append(min(lit_len, 0xF) << 4)
    if lit_len >= 0xF:
        _write_length(out, lit_len - 0xF)
    out += src[start:]


def _lz4_compress_block(src: bytes) -> bytes:
    n = len(src)
    out = bytearray()
    if n < _MFLIMIT + 1:
        _last_literals(out, src, 0)
        return bytes(out)

    if n < 0xFFFF:  # lz4_flex HashTable4KU16: hash of 4 bytes, u16 positions

        def slot(pos: int) -> int:
            seq = int.from_bytes(src[pos : pos + 4], "little")
            return ((seq * 2654435761) & 0xFFFFFFFF) >> 20

        stored = 0xFFFF
    else:  # lz4_flex HashTable4K: hash of 5 bytes (read as 8), u32 positions

        def slot(pos: int) -> int:
            seq = int.from_bytes(src[pos : pos + 8], "little")
            return ((((seq << 24) & _MASK64) * 889523592379) & _MASK64) >> 52

        stored = 0xFFFFFFFF

    table = [0] * 4096
    end_pos_check = n - _MFLIMIT
    literal_start = 0
    table[slot(0)] = 0
    cur = 1
    while True:
        # Find a 4-byte match; after every 32 misses the step grows by one.
        non_match_count = 1 << _SKIP_SHIFT
        next_cur = cur
        while True:
            step = non_match_count >> _SKIP_SHIFT
            non_match_count += 1
            cur = next_cur
            next_cur += step
            if cur > end_pos_check:
                _last_literals(out, src, literal_start)
                return bytes(out)
            h = slot(cur)
            candidate = table[h]
            table[h] = cur & stored
            if not 0 <= cur - candidate <= _MAX_DISTANCE:
                continue
            if src[candidate : candidate + 4] == src[cur : cur + 4]:
                break
        offset = cur - candidate
        while candidate > 0 and cur > literal_start and src[cur - 1] == src[candidate - 1]:
            cur -= 1
            candidate -= 1
        lit_len = cur - literal_start
        cur += _MINMATCH
        candidate += _MINMATCH
        limit = max(0, n - (cur + _END_OFFSET))
        match_len = 0
        while match_len < limit and src[cur + match_len] == src[candidate + match_len]:
            match_len += 1
        cur += match_len
        table[slot(cur - 2)] = (cur - 2) & stored

        out.append((min(lit_len, 0xF) << 4) | min(match_len, 0xF))
        if lit_len >= 0xF:
            _write_length(out, lit_len - 0xF)
        out += src[literal_start : literal_start + lit_len]
        out += offset.to_bytes(2, "little")
        if match_len >= 0xF:
            _write_length(out, match_len - 0xF)
        literal_start = cur


# -- LZ4 block decoder, accepting exactly what lz4_flex's decoder accepts --


def _read_length(src: bytes, i: int) -> tuple[int, int]:
    n = 0
    while True:
        if i >= len(src):
            raise ValueError("corrupt frame: bad lz4 data: truncated length")
        byte = src[i]
        i += 1
        n += byte
        if byte != 0xFF:
            return n, i


def _lz4_decompress_block(src: bytes, capacity: int) -> bytearray:
    out = bytearray()
    i = 0
    while True:
        if i >= len(src):  # also: a block may not end right after a match
            raise ValueError("corrupt frame: bad lz4 data: truncated block")
        token = src[i]
        i += 1
        lit_len = token >> 4
        if lit_len == 0xF:
            extra, i = _read_length(src, i)
            lit_len += extra
        if lit_len > len(src) - i:
            raise ValueError("corrupt frame: bad lz4 data: literal past the end of the block")
        if len(out) + lit_len > capacity:
            raise ValueError("corrupt frame: bad lz4 data: output longer than the header says")
        out += src[i : i + lit_len]
        i += lit_len
        if i >= len(src):
            return out  # the last sequence is literals only
        if len(src) - i < 2:
            raise ValueError("corrupt frame: bad lz4 data: truncated match offset")
        offset = src[i] | (src[i + 1] << 8)
        i += 2
        if offset == 0 or offset > len(out):
            raise ValueError(f"corrupt frame: bad lz4 data: match offset {offset} out of bounds")
        match_len = (token & 0xF) + _MINMATCH
        if match_len == 0xF + _MINMATCH:
            extra, i = _read_length(src, i)
            match_len += extra
        if len(out) + match_len > capacity:
            raise ValueError("corrupt frame: bad lz4 data: output longer than the header says")
        start = len(out) - offset
        if offset >= match_len:
            out += out[start : start + match_len]
        else:  # overlapping copy repeats the last `offset` bytes
            pattern = out[start:]
            out += (pattern * (match_len // offset + 1))[:match_len]
