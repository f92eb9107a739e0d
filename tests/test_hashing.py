"""The segment hash: SHA-256, URL-safe base64 without padding, 43 characters."""

from __future__ import annotations

import base64
import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.errors import SegmentNameError
from protocol.hashing import (
    HASH_BYTES,
    HASH_TEXT_LENGTH,
    SegmentHasher,
    decode_hash,
    encode_hash,
    hash_bytes,
)

EXAMPLE_HASH = "7IS92rssMzoSBQDIevHStbTNy-URRV3Vw-jzZ6pwOZM"


def test_constants():
    assert HASH_BYTES == 32
    assert HASH_TEXT_LENGTH == 43


def test_known_vector():
    # SHA-256 of the empty string.
    digest = hashlib.sha256(b"").digest()
    assert encode_hash(digest) == "47DEQpj8HBSa-_TImW-5JCeuQeRkm5NMpJWZG3hSuFU"
    assert hash_bytes(b"") == digest


def test_design_example_decodes():
    raw = decode_hash(EXAMPLE_HASH)
    assert len(raw) == 32
    assert raw == base64.urlsafe_b64decode(EXAMPLE_HASH + "=")
    assert encode_hash(raw) == EXAMPLE_HASH


@settings(max_examples=300)
@given(st.binary(min_size=32, max_size=32))
def test_encode_decode_round_trip(raw):
    text = encode_hash(raw)
    assert len(text) == 43
    assert "=" not in text and "+" not in text and "/" not in text
    assert decode_hash(text) == raw


@settings(max_examples=200)
@given(st.binary(max_size=2000))
def test_hash_bytes_is_sha256(data):
    assert hash_bytes(data) == hashlib.sha256(data).digest()


@st.composite
def chunked(draw):
    data = draw(st.binary(max_size=4096))
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=20)))
    bounds = [0, *cuts, len(data)]
    return data, [data[a:b] for a, b in zip(bounds, bounds[1:])]


@settings(max_examples=300)
@given(chunked(), st.sampled_from([bytes, bytearray, memoryview]))
def test_hasher_in_any_chunking_equals_sha256_of_whole(case, wrap):
    data, chunks = case
    assert b"".join(chunks) == data
    hasher = SegmentHasher()
    for chunk in chunks:
        hasher.update(wrap(chunk))
    assert hasher.digest() == hashlib.sha256(data).digest()
    assert hasher.text() == encode_hash(hashlib.sha256(data).digest())
    assert hasher.size == len(data)


def test_hasher_tracks_size():
    hasher = SegmentHasher()
    assert hasher.size == 0
    assert hasher.digest() == hashlib.sha256(b"").digest()
    hasher.update(b"abc")
    assert hasher.size == 3
    hasher.update(b"")
    assert hasher.size == 3
    hasher.update(memoryview(b"x" * 1000))
    assert hasher.size == 1003
    # digest() does not end the stream.
    hasher.digest()
    hasher.update(b"!")
    assert hasher.size == 1004
    assert hasher.digest() == hashlib.sha256(b"abc" + b"x" * 1000 + b"!").digest()


@pytest.mark.parametrize("length", [0, 1, 31, 33, 64])
def test_encode_rejects_wrong_length(length):
    with pytest.raises(SegmentNameError, match="32 bytes"):
        encode_hash(b"\x00" * length)


@pytest.mark.parametrize(
    "text",
    ["", EXAMPLE_HASH[:-1], EXAMPLE_HASH + "A", EXAMPLE_HASH + "=", "A" * 42, "A" * 44, "A" * 64],
)
def test_decode_rejects_wrong_length(text):
    with pytest.raises(SegmentNameError, match="43 URL-safe base64"):
        decode_hash(text)


@pytest.mark.parametrize("bad", ["+", "/", "=", " ", ".", "\x00", "\n", "\u00e9", "\u0661", "\udcff"])
def test_decode_rejects_bad_characters(bad):
    for pos in (0, 20, 42):
        text = EXAMPLE_HASH[:pos] + bad + EXAMPLE_HASH[pos + 1:]
        assert len(text) == 43
        with pytest.raises(SegmentNameError, match="43 URL-safe base64"):
            decode_hash(text)


def test_decode_rejects_trailing_newline():
    # `$` would match before a final newline; the check must not.
    with pytest.raises(SegmentNameError):
        decode_hash(EXAMPLE_HASH + "\n")


def test_decode_rejects_non_strings():
    with pytest.raises(SegmentNameError):
        decode_hash(EXAMPLE_HASH.encode())
    with pytest.raises(SegmentNameError):
        decode_hash(None)


@settings(max_examples=200)
@given(st.binary(min_size=32, max_size=32), st.integers(1, 3))
def test_decode_rejects_non_canonical_last_character(raw, unused_bits):
    text = encode_hash(raw)
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    last = alphabet.index(text[-1])
    assert last & 0b11 == 0  # canonical: the 2 unused bits are zero
    other = text[:-1] + alphabet[last | unused_bits]
    with pytest.raises(SegmentNameError, match="not canonical"):
        decode_hash(other)


@settings(max_examples=300)
@given(st.text(max_size=60))
def test_decode_on_arbitrary_text_raises_only_segment_name_error(text):
    try:
        raw = decode_hash(text)
    except SegmentNameError:
        return
    assert encode_hash(raw) == text
