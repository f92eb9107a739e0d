"""Segment and tombstone names: parsing, formatting, and every rejection rule."""

from __future__ import annotations

import base64
import datetime as dt
import string
from decimal import Decimal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocol.errors import SegmentNameError
from protocol.hashing import encode_hash
from protocol.names import (
    MAX_COMPONENT_LENGTH,
    MAX_PATH_LENGTH,
    SEGMENT_TYPES,
    Kind,
    SegmentName,
    format_hour,
    parse_filename,
    parse_hour,
    parse_path,
    parse_segment_path,
    parse_tombstone_path,
    split_common_names,
    segment_filename_for,
    tombstone_filename_for,
    validate_component,
)

EXAMPLE_HASH = "7IS92rssMzoSBQDIevHStbTNy-URRV3Vw-jzZ6pwOZM"
EXAMPLE = (
    "desertbus/source/2019-11-13T02/45:51.608000-2.0-full-" + EXAMPLE_HASH + ".ts"
)
EXAMPLE_TOMBSTONE = EXAMPLE[: -len(".ts")] + ".tombstone"
PREFIX = "desertbus/source/2019-11-13T02/"


def with_file(stem: str, suffix: str = ".ts") -> str:
    return PREFIX + stem + suffix


def rejects(path: object, *fragments: str) -> SegmentNameError:
    """parse_path(path) must raise SegmentNameError whose message holds every fragment."""
    with pytest.raises(SegmentNameError) as info:
        parse_path(path)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    return info.value


# ---- the DESIGN.md example ----

def test_design_example_parses():
    name, kind = parse_path(EXAMPLE)
    assert kind is Kind.SEGMENT
    assert name.channel == "desertbus"
    assert name.quality == "source"
    assert name.hour == "2019-11-13T02"
    assert name.start == dt.datetime(2019, 11, 13, 2, 45, 51, 608000, tzinfo=dt.timezone.utc)
    assert name.start.tzinfo is not None
    assert name.start.utcoffset() == dt.timedelta(0)
    assert name.duration == Decimal("2.0")
    assert isinstance(name.duration, Decimal)
    assert name.type == "full"
    assert name.hash == base64.urlsafe_b64decode(EXAMPLE_HASH + "=")
    assert len(name.hash) == 32
    assert name.hash_text == EXAMPLE_HASH


def test_design_example_properties():
    name, _ = parse_path(EXAMPLE)
    assert name.hour_path == "desertbus/source/2019-11-13T02"
    assert name.filename == EXAMPLE.rsplit("/", 1)[1]
    assert name.stem == "45:51.608000-2.0-full-" + EXAMPLE_HASH
    assert name.path == EXAMPLE
    assert name.end == name.start + dt.timedelta(seconds=2)
    assert name.replicable


def test_design_example_formats_back():
    name, kind = parse_path(EXAMPLE)
    assert name.format(kind) == EXAMPLE
    assert name.format() == EXAMPLE
    assert name.format(Kind.TOMBSTONE) == EXAMPLE_TOMBSTONE


@pytest.mark.parametrize(
    "path",
    [
        EXAMPLE,
        EXAMPLE_TOMBSTONE,
        with_file("00:00.000000-2.002-suspect-" + EXAMPLE_HASH),
        with_file("59:59.999999-0.5-partial-" + EXAMPLE_HASH),
        with_file("01:02.030405-10-temp-" + EXAMPLE_HASH),
        with_file("01:02.030405-2.10-full-" + EXAMPLE_HASH, ".tombstone"),
        with_file("01:02.030405-123456789.123456789-full-" + EXAMPLE_HASH),
        "a/b/2000-01-01T00/00:00.000000-0.000000001-full-" + EXAMPLE_HASH + ".ts",
        "chan nel/1080p60/2024-02-29T23/30:00.000000-2.0-full-" + EXAMPLE_HASH + ".ts",
        "k\u00e9/q_u-a:l/2019-11-13T02/30:00.000000-2.0-full-" + EXAMPLE_HASH + ".ts",
        "x/y/0001-01-01T00/00:00.000000-2.0-full-" + EXAMPLE_HASH + ".ts",
        "x/y/9999-12-31T23/59:57.000000-2.0-full-" + EXAMPLE_HASH + ".ts",
    ],
)
def test_canonical_names_round_trip(path):
    name, kind = parse_path(path)
    assert name.format(kind) == path
    assert parse_path(name.format(kind)) == (name, kind)


def test_all_types_parse():
    for type_ in SEGMENT_TYPES:
        name, _ = parse_path(with_file(f"45:51.608000-2.0-{type_}-{EXAMPLE_HASH}"))
        assert name.type == type_
        assert name.replicable == (type_ != "temp")


def test_parse_filename_matches_parse_path():
    channel, quality, hour, filename = EXAMPLE.split("/")
    assert parse_filename(channel, quality, hour, filename) == parse_path(EXAMPLE)


def test_versions_of_one_segment_are_distinct_values():
    a, _ = parse_path(EXAMPLE)
    b, _ = parse_path(with_file("45:51.608000-2.0-suspect-" + EXAMPLE_HASH))
    assert a.start == b.start
    assert a != b


# ---- rejection rules, one by one ----

def test_rejects_unknown_type():
    e = rejects(with_file("45:51.608000-2.0-complete-" + EXAMPLE_HASH), "type", "'complete'")
    assert "full" in str(e)


@pytest.mark.parametrize("type_", ["Full", "FULL", "", "tmp", "fulll"])
def test_rejects_other_unknown_types(type_):
    rejects(with_file(f"45:51.608000-2.0-{type_}-{EXAMPLE_HASH}"), "type")


@pytest.mark.parametrize(
    "hash_text",
    [
        EXAMPLE_HASH[:-1],  # 42 characters
        EXAMPLE_HASH + "A",  # 44 characters
        EXAMPLE_HASH[:-1] + "=",  # padding is never part of a name
        EXAMPLE_HASH[:-1] + "+",  # standard, not URL-safe, alphabet
        EXAMPLE_HASH[:-1] + "!",
        EXAMPLE_HASH[:-1] + "\u00e9",
        "",
    ],
)
def test_rejects_hash_not_43_urlsafe_characters(hash_text):
    filename = "45:51.608000-2.0-full-" + hash_text + ".ts"
    rejects("desertbus/source/2019-11-13T02/" + filename, "hash", "43 URL-safe base64")


@pytest.mark.parametrize("last", ["N", "O", "P"])
def test_rejects_non_canonical_last_hash_character(last):
    # 43 characters carry 258 bits; the last character's low 2 bits must be zero.
    assert EXAMPLE_HASH[-1] == "M"
    rejects(
        with_file("45:51.608000-2.0-full-" + EXAMPLE_HASH[:-1] + last),
        "hash",
        "not canonical",
    )


@pytest.mark.parametrize("duration", ["0", "0.0", "0.000", "inf", "nan", "1e3", "2.", "+2.0",
                                      ".5", "02.0", "2,0", "Infinity", "0x10", "2.0000000001",
                                      "1234567890", "\u0662.0", " 2.0"])
def test_rejects_duration_not_positive_finite_decimal(duration):
    rejects(with_file(f"45:51.608000-{duration}-full-{EXAMPLE_HASH}"), "duration", repr(duration))


def test_rejects_empty_duration():
    rejects(with_file(f"45:51.608000--full-{EXAMPLE_HASH}"), "duration", "''")


def test_rejects_negative_duration():
    # "-1" splits on '-': the duration field is empty.
    rejects(with_file(f"45:51.608000--1-full-{EXAMPLE_HASH}"), "duration")


def test_rejects_minutes_out_of_range():
    rejects(with_file(f"60:00.000000-2.0-full-{EXAMPLE_HASH}"), "minutes", "60")


def test_rejects_seconds_out_of_range():
    rejects(with_file(f"00:60.000000-2.0-full-{EXAMPLE_HASH}"), "seconds", "60")


@pytest.mark.parametrize(
    "time_text",
    ["45:51.60800", "45:51.6080000", "45:51", "4:51.608000", "45:5.608000", "45-51.608000",
     "45:51,608000", "ab:cd.efghij", "\u0664\u0665:51.608000", ""],
)
def test_rejects_time_not_mm_ss_ffffff(time_text):
    rejects(with_file(f"{time_text}-2.0-full-{EXAMPLE_HASH}"), "time", "MM:SS.ffffff")


@pytest.mark.parametrize("hour", ["2019-13-01T00", "2019-11-31T00", "2019-02-29T00", "0000-01-01T00"])
def test_rejects_hour_that_is_not_real(hour):
    rejects(f"desertbus/source/{hour}/45:51.608000-2.0-full-{EXAMPLE_HASH}.ts", "hour", hour)


def test_rejects_hour_24():
    rejects(f"desertbus/source/2019-11-13T24/45:51.608000-2.0-full-{EXAMPLE_HASH}.ts",
            "hour", "2019-11-13T24")


@pytest.mark.parametrize(
    "hour",
    ["2019-11-13 02", "2019-11-13T2", "2019-11-13T002", "19-11-13T02", "2019-11-13", "2019.11.13T02",
     "2019-11-13t02", "2019-11-13T02:00", "", "\u0662019-11-13T02"],
)
def test_rejects_hour_not_in_hour_format(hour):
    rejects(f"desertbus/source/{hour}/45:51.608000-2.0-full-{EXAMPLE_HASH}.ts",
            "hour", "YYYY-MM-DDTHH")


COMPONENT_CASES = [
    ("", "is empty"),
    (".", "starts with '.'"),
    (".hidden", "starts with '.'"),
    ("..", "starts with '.'"),
    ("a..b", "contains '..'"),
    ("a\\b", "\\"),
    ("a\x00b", "NUL"),
    ("a\nb", "control character"),
    ("a\x7fb", "control character"),
    ("x" * (MAX_COMPONENT_LENGTH + 1), "longer than"),
]


@pytest.mark.parametrize("bad, fragment", COMPONENT_CASES)
def test_validate_component_rules(bad, fragment):
    with pytest.raises(SegmentNameError, match="channel") as info:
        validate_component(bad, "channel")
    assert fragment in str(info.value)


def test_validate_component_holding_slash():
    with pytest.raises(SegmentNameError, match="contains '/'"):
        validate_component("a/b", "quality")


def test_validate_component_rejects_surrogates_and_non_strings():
    with pytest.raises(SegmentNameError, match="not valid Unicode"):
        validate_component("a\udcff", "channel")
    with pytest.raises(SegmentNameError, match="must be a string"):
        validate_component(b"abc", "channel")
    assert validate_component("x" * MAX_COMPONENT_LENGTH, "channel") == "x" * MAX_COMPONENT_LENGTH


@pytest.mark.parametrize(
    "bad, fragment", [c for c in COMPONENT_CASES if c[0] not in ("", "a\\b", "a\x00b")]
)
def test_rejects_bad_channel_in_path(bad, fragment):
    rejects(f"{bad}/source/2019-11-13T02/45:51.608000-2.0-full-{EXAMPLE_HASH}.ts",
            "channel", fragment)


@pytest.mark.parametrize("bad, fragment", [c for c in COMPONENT_CASES if c[0] not in ("a\\b", "a\x00b")])
def test_rejects_bad_quality_in_path(bad, fragment):
    rejects(f"desertbus/{bad}/2019-11-13T02/45:51.608000-2.0-full-{EXAMPLE_HASH}.ts",
            "quality", fragment)


@pytest.mark.parametrize("where", ["channel", "quality", "file"])
@pytest.mark.parametrize("bad, label", [("\\", "'\\'"), ("\x00", "NUL")])
def test_rejects_backslash_and_nul_anywhere_in_path(where, bad, label):
    channel, quality, hour, filename = EXAMPLE.split("/")
    if where == "channel":
        channel = "a" + bad + "b"
    elif where == "quality":
        quality = "a" + bad + "b"
    else:
        filename = filename[:5] + bad + filename[5:]
    rejects(f"{channel}/{quality}/{hour}/{filename}", label)


def test_rejects_empty_channel():
    # In a path, an empty channel makes the path absolute; as a component it is empty.
    rejects(f"/source/2019-11-13T02/45:51.608000-2.0-full-{EXAMPLE_HASH}.ts", "absolute")
    with pytest.raises(SegmentNameError, match="channel is empty"):
        parse_filename("", "source", "2019-11-13T02", EXAMPLE.rsplit("/", 1)[1])


def test_channel_holding_slash_is_wrong_component_count():
    rejects("desert/bus/source/2019-11-13T02/45:51.608000-2.0-full-" + EXAMPLE_HASH + ".ts",
            "components")


@pytest.mark.parametrize("path", ["/" + EXAMPLE, "//" + EXAMPLE, "/desertbus/source/x"])
def test_rejects_absolute_paths(path):
    rejects(path, "absolute")


@pytest.mark.parametrize(
    "path, count",
    [
        ("source/2019-11-13T02/45:51.608000-2.0-full-" + EXAMPLE_HASH + ".ts", 3),
        ("root/" + EXAMPLE, 5),
        (EXAMPLE + "/", 5),
        ("45:51.608000-2.0-full-" + EXAMPLE_HASH + ".ts", 1),
        ("", 1),
        ("desertbus/source/2019-11-13T02/sub/45:51.608000-2.0-full-" + EXAMPLE_HASH + ".ts", 5),
    ],
)
def test_rejects_wrong_number_of_components(path, count):
    rejects(path, "CHANNEL/QUALITY/HOUR/FILE", f"got {count} components")


def test_rejects_dot_dot_traversal():
    rejects("../source/2019-11-13T02/45:51.608000-2.0-full-" + EXAMPLE_HASH + ".ts", "channel")
    rejects("desertbus/../2019-11-13T02/45:51.608000-2.0-full-" + EXAMPLE_HASH + ".ts", "quality")
    rejects("desertbus/source/../45:51.608000-2.0-full-" + EXAMPLE_HASH + ".ts", "hour")
    rejects("desertbus/source/2019-11-13T02/..", "neither .ts nor .tombstone")


@pytest.mark.parametrize("suffix", ["", ".TS", ".mp4", ".ts.tmp", ".tombstone.bak", ".ts ", ".tombstones"])
def test_rejects_wrong_suffix(suffix):
    rejects(with_file("45:51.608000-2.0-full-" + EXAMPLE_HASH, suffix), "neither .ts nor .tombstone")


def test_rejects_double_suffix():
    # The suffix is stripped once; what remains must be a bare hash.
    rejects(with_file("45:51.608000-2.0-full-" + EXAMPLE_HASH + ".tombstone"), "hash")


def test_rejects_too_few_fields():
    rejects(with_file("45:51.608000-2.0-full"), "TIME-DURATION-TYPE-HASH")
    rejects(with_file("45:51.608000"), "TIME-DURATION-TYPE-HASH")


def test_rejects_too_long_path():
    rejects("c" * (MAX_PATH_LENGTH + 1), "longer than", str(MAX_PATH_LENGTH))
    long_file = "45:51.608000-" + "1" * 500 + "-full-" + EXAMPLE_HASH + ".ts"
    rejects(PREFIX + long_file, "longer than")


def test_rejects_non_strings():
    rejects(EXAMPLE.encode(), "must be a string")
    rejects(None, "must be a string")
    with pytest.raises(SegmentNameError, match="file name must be a string"):
        parse_filename("desertbus", "source", "2019-11-13T02", None)


def test_rejects_segment_ending_after_year_9999():
    rejects(f"x/y/9999-12-31T23/59:59.000000-2.0-full-{EXAMPLE_HASH}.ts", "year 9999")
    rejects(f"x/y/9990-01-01T00/00:00.000000-999999999-full-{EXAMPLE_HASH}.ts", "year 9999")


def test_segment_name_error_is_value_error():
    assert issubclass(SegmentNameError, ValueError)


# ---- hours ----

def test_parse_and_format_hour():
    when = parse_hour("2019-11-13T02")
    assert when == dt.datetime(2019, 11, 13, 2, tzinfo=dt.timezone.utc)
    assert format_hour(when) == "2019-11-13T02"
    # Any aware time formats as its UTC hour.
    est = dt.timezone(dt.timedelta(hours=-5))
    assert format_hour(dt.datetime(2019, 11, 12, 21, 59, 59, tzinfo=est)) == "2019-11-13T02"


@pytest.mark.parametrize("hour", ["0001-01-01T00", "0999-06-15T07", "1000-01-01T00", "9999-12-31T23"])
def test_format_hour_zero_pads_every_year(hour):
    assert format_hour(parse_hour(hour)) == hour


def test_parse_hour_rejects_non_strings():
    with pytest.raises(SegmentNameError, match="YYYY-MM-DDTHH"):
        parse_hour(2019)


# ---- tombstones ----

def test_tombstone_names_map_to_and_from_their_segment():
    segment, kind = parse_path(EXAMPLE)
    assert kind is Kind.SEGMENT
    tombstone, tkind = parse_path(EXAMPLE_TOMBSTONE)
    assert tkind is Kind.TOMBSTONE
    # Both name the same segment version.
    assert tombstone == segment
    assert segment.tombstone_filename == EXAMPLE_TOMBSTONE.rsplit("/", 1)[1]
    assert segment.tombstone_path == EXAMPLE_TOMBSTONE
    assert segment.format(Kind.TOMBSTONE) == EXAMPLE_TOMBSTONE
    assert parse_tombstone_path(EXAMPLE_TOMBSTONE) == segment
    assert parse_segment_path(EXAMPLE) == segment


def test_tombstone_filename_helpers_are_inverse():
    segment, _ = parse_path(EXAMPLE)
    assert tombstone_filename_for(segment.filename) == segment.tombstone_filename
    assert segment_filename_for(segment.tombstone_filename) == segment.filename
    assert segment_filename_for(tombstone_filename_for(segment.filename)) == segment.filename


def test_parse_tombstone_path_rejects_segment_and_vice_versa():
    with pytest.raises(SegmentNameError, match="names a segment, not a tombstone"):
        parse_tombstone_path(EXAMPLE)
    with pytest.raises(SegmentNameError, match="names a tombstone, not a segment"):
        parse_segment_path(EXAMPLE_TOMBSTONE)


def test_tombstone_names_are_validated_like_segments():
    rejects(EXAMPLE_TOMBSTONE.replace("full", "bogus"), "type")
    rejects("/" + EXAMPLE_TOMBSTONE, "absolute")


# ---- hypothesis: round trip ----

SAFE_ALPHABET = string.ascii_letters + string.digits + "_-:+@ \u00e9\u4e2d"
components = st.text(alphabet=SAFE_ALPHABET, min_size=1, max_size=24).filter(
    lambda s: not s.startswith(".")
)


@st.composite
def durations(draw) -> str:
    """Duration texts as archives hold them: str(float)-like positive decimals."""
    choice = draw(st.integers(0, 2))
    if choice == 0:
        value = draw(st.floats(min_value=0.001, max_value=100_000, allow_nan=False))
        text = str(round(value, draw(st.integers(1, 6))))
        if "e" in text or float(text) <= 0:
            text = "2.0"
        return text
    if choice == 1:
        return draw(st.sampled_from(["2.0", "2.002", "1.5", "6.006", "0.5", "10", "2.10"]))
    whole = draw(st.integers(0, 999_999_999))
    frac = draw(st.text(alphabet=string.digits, min_size=0 if whole else 1, max_size=9))
    if whole == 0 and not frac.strip("0"):
        frac = frac[:-1] + "1" if frac else "1"
    return f"{whole}.{frac}" if frac else str(whole)


@st.composite
def segment_names(draw) -> SegmentName:
    hour_start = draw(
        st.datetimes(min_value=dt.datetime(1, 1, 1), max_value=dt.datetime(2200, 1, 1))
    ).replace(minute=0, second=0, microsecond=0, tzinfo=dt.timezone.utc)
    start = hour_start + dt.timedelta(
        minutes=draw(st.integers(0, 59)),
        seconds=draw(st.integers(0, 59)),
        microseconds=draw(st.integers(0, 999_999)),
    )
    return SegmentName(
        channel=draw(components),
        quality=draw(components),
        hour=format_hour(hour_start),
        start=start,
        duration=Decimal(draw(durations())),
        type=draw(st.sampled_from(SEGMENT_TYPES)),
        hash=draw(st.binary(min_size=32, max_size=32)),
    )


@settings(max_examples=400, deadline=None)
@given(segment_names(), st.sampled_from(list(Kind)))
def test_format_then_parse_round_trips(name, kind):
    text = name.format(kind)
    parsed, parsed_kind = parse_path(text)
    assert parsed == name
    assert parsed_kind is kind
    assert parsed.format(parsed_kind) == text
    assert str(parsed.duration) == str(name.duration)
    assert parsed.hash_text == encode_hash(name.hash)
    assert parsed.start.tzinfo is not None


# ---- hypothesis: parse_path is total ----

def parse_or_name_error(text: object) -> None:
    try:
        name, kind = parse_path(text)
    except SegmentNameError:
        return
    # What parses is canonical: formatting gives back exactly the input.
    assert name.format(kind) == text


@settings(max_examples=500, deadline=None)
@given(st.text())
def test_parse_path_on_arbitrary_text_only_raises_segment_name_error(text):
    parse_or_name_error(text)


@settings(max_examples=300, deadline=None)
@given(
    st.text(
        alphabet=st.one_of(
            st.characters(), st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF)
        ),
        max_size=200,
    )
)
def test_parse_path_on_text_with_surrogates(text):
    parse_or_name_error(text)


MUTATION_PIECES = st.sampled_from(
    ["/", "..", "\x00", "\\", ".", "-", ":", "=", " ", "\n", "\udcff", "\u00e9", "0", "9", "e", ".ts",
     ".tombstone", "full", "//"]
)


@st.composite
def mutated_names(draw) -> str:
    text = draw(segment_names()).format(draw(st.sampled_from(list(Kind))))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["insert", "replace", "delete", "truncate"]))
        pos = draw(st.integers(0, len(text)))
        if op == "insert":
            piece = draw(st.one_of(MUTATION_PIECES, st.characters()))
            text = text[:pos] + piece + text[pos:]
        elif op == "replace" and pos < len(text):
            text = text[:pos] + draw(st.characters()) + text[pos + 1:]
        elif op == "delete":
            text = text[:pos] + text[pos + 1:]
        else:
            text = text[:pos]
    return text


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_names())
def test_parse_path_on_mutated_names_only_raises_segment_name_error(text):
    parse_or_name_error(text)


@settings(max_examples=100, deadline=None)
@given(st.one_of(st.none(), st.integers(), st.binary(), st.lists(st.text())))
def test_parse_path_on_non_strings_raises_segment_name_error(value):
    with pytest.raises(SegmentNameError):
        parse_path(value)


TEMP_IDS = [
    "3f2b8c1e-6a4d-4e8b-9c1a-0f1e2d3c4b5a",  # str(uuid.uuid4()), as wubloader writes it
    "3F2B8C1E-6A4D-4E8B-9C1A-0F1E2D3C4B5A",
    "3f2b8c1e6a4d4e8b9c1a0f1e2d3c4b5a",
    EXAMPLE_HASH,  # a temp named with the hash it will have
]


@pytest.mark.parametrize("temp_id", TEMP_IDS)
def test_downloader_temp_names_parse_as_temp_segments(temp_id):
    path = with_file(f"45:51.608000-2.002-temp-{temp_id}")
    name, kind = parse_path(path)
    assert (name.type, kind, name.replicable) == ("temp", Kind.SEGMENT, False)
    assert name.format() == path
    assert name.hash == (b"" if temp_id != EXAMPLE_HASH else name.hash)


@pytest.mark.parametrize("bad", [
    "45:51.608000-2.0-full-3f2b8c1e-6a4d-4e8b-9c1a-0f1e2d3c4b5a",  # a UUID is no hash
    "45:51.608000-2.0-temp-3f2b8c1e-6a4d-4e8b-9c1a-0f1e2d3c4b5",
    "45:51.608000-2.0-temp-3f2b8c1e-6a4d-4e8b-9c1a-0f1e2d3c4b5g",
    "45:51.608000-2.0-temp-",
])
def test_near_temp_names_are_still_refused(bad):
    with pytest.raises(SegmentNameError):
        parse_path(with_file(bad))


# ---- the fast split of one hour directory's names agrees with parse_filename ----

def fast_agrees(channel: str, quality: str, hour: str, filename: str) -> Kind | None:
    """The kind the fast split gives the name (None: left to parse_filename), checked
    against parse_filename: a name it recognises must parse as replicable, that kind."""
    segments, tombstones, others = split_common_names(channel, quality, hour, [filename])
    assert len(segments) + len(tombstones) + len(others) == 1
    kind = Kind.SEGMENT if segments else Kind.TOMBSTONE if tombstones else None
    if kind is not None:
        name, parsed_kind = parse_filename(channel, quality, hour, filename)
        assert (parsed_kind, name.replicable) == (kind, True)
    return kind


@settings(max_examples=400, deadline=None)
@given(segment_names(), st.sampled_from(list(Kind)))
def test_fast_split_recognises_canonical_names(name, kind):
    filename = name.filename if kind is Kind.SEGMENT else name.tombstone_filename
    expected = kind if name.replicable else None
    assert fast_agrees(name.channel, name.quality, name.hour, filename) is expected


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_names())
def test_fast_split_accepts_only_what_parses(text):
    parts = text.split("/")
    if len(parts) == 4:
        fast_agrees(*parts)


@pytest.mark.parametrize("stem", [
    "45:51.608000-0-full-" + EXAMPLE_HASH,              # zero duration
    "45:51.608000-0.000000000-full-" + EXAMPLE_HASH,
    "45:51.608000-0.0000000001-full-" + EXAMPLE_HASH,   # ten fraction digits
    "45:51.608000-2.-full-" + EXAMPLE_HASH,
    "45:51.608000-02-full-" + EXAMPLE_HASH,
    "45:51.608000-1234567890-full-" + EXAMPLE_HASH,     # ten integer digits
    "60:51.608000-2.0-full-" + EXAMPLE_HASH,
    "45:60.608000-2.0-full-" + EXAMPLE_HASH,
    "45:51.60800-2.0-full-" + EXAMPLE_HASH,
    "45:51.608000-2.0-full-" + EXAMPLE_HASH[:-1] + "N",  # non-canonical last character
    "45:51.608000-2.0-full-" + EXAMPLE_HASH + "A",
    "45:51.608000-2.0-temp-" + EXAMPLE_HASH,             # temp: parsed, never replicable
    "45:51.608000-2.0-ful-" + EXAMPLE_HASH,
])
def test_fast_split_leaves_unusual_names_to_the_parser(stem):
    for suffix in (".ts", ".tombstone", ".tsx", ""):
        assert fast_agrees("desertbus", "source", "2019-11-13T02", stem + suffix) is None


def test_fast_split_takes_the_zero_point_durations_that_are_positive():
    for duration in ("0.5", "0.000000001", "0.100000000", "999999999.999999999"):
        for suffix, kind in ((".ts", Kind.SEGMENT), (".tombstone", Kind.TOMBSTONE)):
            assert fast_agrees("c", "q", "2019-11-13T02",
                               f"45:51.608000-{duration}-full-{EXAMPLE_HASH}{suffix}") is kind


@pytest.mark.parametrize("channel, quality, hour", [
    ("", "source", "2019-11-13T02"), ("a/b", "source", "2019-11-13T02"),
    ("desertbus", ".hidden", "2019-11-13T02"), ("desertbus", "source", "2019-11-13T24"),
    ("desertbus", "source", "2019-13-13T02"),
    ("desertbus", "source", "9999-12-31T23"),  # a long duration ends after 9999: parsed
])
def test_every_name_is_parsed_in_a_directory_that_is_not_plain(channel, quality, hour):
    names = [EXAMPLE[len(PREFIX):], EXAMPLE_TOMBSTONE[len(PREFIX):]]
    assert split_common_names(channel, quality, hour, names) == ([], [], names)
