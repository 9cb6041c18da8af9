"""The compiled module (wukong_native) and its pure-Python references (wukong.reference.hashring,
wukong.reference.compression) as one specification: every behaviour is checked on both, and the
two must agree bit for bit (hash placements, raw/lz4 decisions, frames, decoded bytes).

The pure-Python LZ4 encoder is slow, so inputs it compresses stay small; large inputs go
through the compiled path only and are cross-decoded by the compiled decoder.
"""

from __future__ import annotations

import numpy as np
import pytest
import wukong_native
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wukong.reference import compression, hashring

RING_IMPLS = [
    pytest.param(wukong_native.HashRing, id="compiled"),
    pytest.param(hashring.HashRing, id="reference"),
]
CODEC_IMPLS = [
    pytest.param(wukong_native, id="compiled"),
    pytest.param(compression, id="reference"),
]

SERVERS = [f"10.0.0.{i}:6379" for i in range(8)]
FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])

DTYPES = [
    "int8",
    "uint8",
    "int16",
    "int32",
    "int64",
    "uint64",
    "float16",
    "float32",
    "float64",
    "complex128",
    "bool",
]


def keys(n: int) -> list[bytes]:
    return [f"job-7/('sum-chunk', {i}, 0)".encode() for i in range(n)]


def text(n: int) -> bytes:
    return (b"the quick brown fox jumps over the lazy dog; " * (n // 45 + 1))[:n]


# -- hash ring --------------------------------------------------------------------------


@given(st.binary(max_size=200))
def test_hash64_is_identical(data):
    assert wukong_native.hash64(data) == hashring.hash64(data)


@pytest.mark.parametrize("HashRing", RING_IMPLS)
def test_empty_ring_is_a_value_error(HashRing):
    with pytest.raises(ValueError, match="at least one node"):
        HashRing([])


@pytest.mark.parametrize("HashRing", RING_IMPLS)
def test_nodes_keeps_the_given_order(HashRing):
    assert HashRing(SERVERS[:3]).nodes == SERVERS[:3]


@pytest.mark.parametrize("HashRing", RING_IMPLS)
def test_batch_placement_equals_single_placement(HashRing):
    ring, ks = HashRing(SERVERS[:5]), keys(2000)
    assert ring.nodes_for(ks) == [ring.node_for(k) for k in ks]


@FAST
@given(
    nodes=st.lists(st.text(min_size=1, max_size=20), min_size=1, max_size=6, unique=True),
    vnodes=st.integers(1, 200),
    ks=st.lists(st.binary(max_size=64), max_size=50),
)
def test_placements_are_identical(nodes, vnodes, ks):
    compiled = wukong_native.HashRing(nodes, vnodes)
    reference = hashring.HashRing(nodes, vnodes)
    assert compiled.nodes_for(ks) == reference.nodes_for(ks)


def test_placements_are_identical_at_scale():
    ks = keys(20_000)
    assert wukong_native.HashRing(SERVERS).nodes_for(ks) == hashring.HashRing(SERVERS).nodes_for(ks)


@pytest.mark.parametrize("HashRing", RING_IMPLS)
def test_three_servers_share_keys_within_20_percent(HashRing):
    counts = np.bincount(HashRing(SERVERS[:3]).nodes_for(keys(100_000)), minlength=3)
    assert np.all(np.abs(counts - 100_000 / 3) <= 0.2 * 100_000 / 3), counts


@pytest.mark.parametrize("HashRing", RING_IMPLS)
def test_adding_a_fourth_server_moves_at_most_30_percent(HashRing):
    ks = keys(100_000)
    before = HashRing(SERVERS[:3]).nodes_for(ks)
    after = HashRing(SERVERS[:4]).nodes_for(ks)
    moved = sum(a != b for a, b in zip(before, after, strict=False))
    assert moved <= 30_000, moved
    assert all(b == 3 for a, b in zip(before, after, strict=False) if a != b)  # only onto the new server


@pytest.mark.parametrize("HashRing", RING_IMPLS)
def test_removing_a_server_moves_only_its_keys(HashRing):
    ks = keys(20_000)
    before = HashRing(SERVERS[:4]).nodes_for(ks)
    after = HashRing(SERVERS[:3]).nodes_for(ks)
    assert all(a == b for a, b in zip(before, after, strict=False) if a != 3)


# -- compression: behaviour on both implementations ----------------------------------


@pytest.mark.parametrize("codec", CODEC_IMPLS)
def test_empty_input_roundtrips_as_raw(codec):
    frame = codec.compress(b"", min_size=0)
    assert frame == b"\x00" + bytes(8)
    assert codec.decompress(frame) == b""


@pytest.mark.parametrize("codec", CODEC_IMPLS)
def test_data_under_min_size_is_raw(codec):
    frame = codec.compress(text(1000))
    assert frame[0] == 0 and frame[9:] == text(1000)


@pytest.mark.parametrize("codec", CODEC_IMPLS)
@pytest.mark.parametrize(
    "array",
    [np.zeros(4096), np.arange(4096, dtype=np.int64)],
    ids=["zeros", "arange"],
)
def test_regular_arrays_are_compressed(codec, array):
    assert codec.is_compressible(array)
    frame = codec.compress(array)
    assert frame[0] == 1 and len(frame) < array.nbytes * 0.9
    assert codec.decompress(frame) == array.tobytes()


@pytest.mark.parametrize("codec", CODEC_IMPLS)
def test_repetitive_text_is_compressed(codec):
    assert codec.is_compressible(text(20_000))
    assert codec.compress(text(20_000))[0] == 1


@pytest.mark.parametrize("codec", CODEC_IMPLS)
def test_random_floats_are_judged_incompressible(codec):
    data = np.random.default_rng(0).random(100_000)
    assert not codec.is_compressible(data)
    frame = codec.compress(data)
    assert frame[0] == 0 and frame[9:] == data.tobytes()


@pytest.mark.parametrize("codec", CODEC_IMPLS)
@pytest.mark.parametrize(
    "frame",
    [
        b"",
        b"\x00",
        b"\x01" + bytes(7),
        b"\x07" + bytes(9),
        b"\x00" + (5).to_bytes(8, "little"),
        b"\x01" + (5).to_bytes(8, "little"),
        b"\x01" + (2**63).to_bytes(8, "little") + b"\x00",
        b"\x01" + (4).to_bytes(8, "little") + b"\x10a\x01\x00",
    ],
    ids=[
        "empty",
        "tag-only",
        "short-header",
        "unknown-tag",
        "raw-truncated",
        "lz4-empty",
        "absurd-length",
        "lz4-ends-after-match",
    ],
)
def test_corrupt_frames_raise_value_error(codec, frame):
    with pytest.raises(ValueError, match="corrupt frame"):
        codec.decompress(frame)


@pytest.mark.parametrize("codec", CODEC_IMPLS)
def test_every_truncation_raises_value_error(codec):
    frame = wukong_native.compress(text(3000), min_size=0)
    for cut in range(len(frame)):
        with pytest.raises(ValueError):
            codec.decompress(frame[:cut])


@pytest.mark.parametrize("codec", CODEC_IMPLS)
def test_accepts_any_buffer(codec):
    data = np.arange(1000, dtype=np.int32)
    expected = codec.compress(data.tobytes(), min_size=0)
    for buf in (bytearray(data.tobytes()), memoryview(data), data):
        assert codec.compress(buf, min_size=0) == expected
    assert codec.decompress(memoryview(expected)) == data.tobytes()


# -- compression: parity ------------------------------------------------------------


def assert_parity(data, min_size=1024):
    """Identical decision and frame; each side decodes the other's frame."""
    compiled = wukong_native.compress(data, min_size=min_size)
    reference = compression.compress(data, min_size=min_size)
    assert compiled == reference
    raw = memoryview(data).cast("B").tobytes() if not isinstance(data, bytes) else data
    assert wukong_native.decompress(reference) == raw
    assert compression.decompress(compiled) == raw
    assert wukong_native.is_compressible(data) == compression.is_compressible(data)


# Bytes drawn from a small alphabet in runs: sometimes compressible, sometimes not,
# so both branches of every decision are exercised.
runs = st.lists(st.tuples(st.binary(min_size=1, max_size=8), st.integers(1, 40)), max_size=60).map(
    lambda parts: b"".join(chunk * k for chunk, k in parts)
)


@FAST
@given(
    data=st.one_of(st.binary(max_size=3000), runs),
    min_size=st.sampled_from([0, 64, 1024]),
)
def test_frames_are_identical_for_byte_strings(data, min_size):
    assert_parity(data, min_size)


@FAST
@given(
    dtype=st.sampled_from(DTYPES),
    n=st.integers(0, 1500),
    seed=st.integers(0, 2**32 - 1),
    kind=st.sampled_from(["random", "arange", "zeros", "repeat"]),
)
def test_frames_are_identical_for_numpy_arrays(dtype, n, seed, kind):
    rng = np.random.default_rng(seed)
    if kind == "random":
        array = (rng.random(n) * 1000).astype(dtype)
    elif kind == "arange":
        array = np.arange(n).astype(dtype)
    elif kind == "zeros":
        array = np.zeros(n, dtype=dtype)
    else:
        array = np.tile(rng.integers(0, 100, 7), n // 7 + 1)[:n].astype(dtype)
    assert_parity(memoryview(array), min_size=0)
    assert_parity(array.tobytes())


@pytest.mark.parametrize(
    "data",
    [text(70_000), np.arange(9000, dtype=np.int64).tobytes()],
    ids=["text", "arange"],
)
def test_frames_are_identical_with_the_large_hash_table(data):
    # >= 64 KiB selects lz4_flex's other hash table (5-byte hash, u32 positions).
    assert_parity(data)


def test_probe_decisions_are_identical_on_large_inputs():
    rng = np.random.default_rng(1)
    half_random = np.concatenate([rng.random(200_000), np.zeros(200_000)])
    for data in (rng.random(500_000), np.zeros(500_000), half_random, text(1 << 20)):
        assert wukong_native.is_compressible(data) == compression.is_compressible(data)


@FAST
@given(
    frame=st.binary(max_size=80),
    tag=st.sampled_from([0, 1]),
    length=st.integers(0, 400),
)
def test_decoders_agree_on_arbitrary_frames(frame, tag, length):
    frame = bytes([tag]) + length.to_bytes(8, "little") + frame
    outcomes = []
    for codec in (wukong_native, compression):
        try:
            outcomes.append(codec.decompress(frame))
        except ValueError:
            outcomes.append(ValueError)
    assert outcomes[0] == outcomes[1]


@FAST
@given(
    data=runs,
    flips=st.lists(st.tuples(st.integers(0), st.integers(1, 255)), max_size=3),
)
def test_decoders_agree_on_corrupted_frames(data, flips):
    frame = bytearray(wukong_native.compress(data, min_size=0))
    for pos, xor in flips:
        frame[pos % len(frame)] ^= xor
    outcomes = []
    for codec in (wukong_native, compression):
        try:
            outcomes.append(codec.decompress(bytes(frame)))
        except ValueError:
            outcomes.append(ValueError)
    assert outcomes[0] == outcomes[1]


# -- compression: large inputs, compiled only (cross-checked against PyPI lz4) ----------


@pytest.mark.parametrize("kind", ["arange", "random"])
def test_64_mib_roundtrip(kind):
    n = 8 << 20  # float64s: 64 MiB
    data = np.arange(n, dtype=np.float64) if kind == "arange" else np.random.default_rng(2).random(n)
    frame = wukong_native.compress(data)
    assert frame[0] == (1 if kind == "arange" else 0)
    assert wukong_native.decompress(frame) == data.tobytes()
    if frame[0] == 1:
        import lz4.block as lz4_block  # a test dependency: missing is a failure, not a skip

        assert lz4_block.decompress(frame[9:], uncompressed_size=data.nbytes) == data.tobytes()


def test_pypi_lz4_blocks_decode_in_both():
    import lz4.block as lz4_block  # a test dependency: missing is a failure, not a skip

    data = text(5000) + np.arange(500, dtype=np.int64).tobytes()
    frame = b"\x01" + len(data).to_bytes(8, "little") + lz4_block.compress(data, store_size=False)
    assert wukong_native.decompress(frame) == data
    assert compression.decompress(frame) == data
