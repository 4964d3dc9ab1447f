"""The record schema, derived from proto/isicflow/v1/lesion_example.proto.

Writer (beam_jobs) and reader (trainer.input_pipeline) both use this module, so a feature's
name and type are defined exactly once: in the .proto.
"""
from __future__ import annotations

import functools
import math
import struct
from typing import Any, Mapping

from google.protobuf import descriptor as _descriptor

from isicflow.protos import lesion_example_pb2

SCHEMA_VERSION: int = lesion_example_pb2.SCHEMA_VERSION_CURRENT
_FIELDS = lesion_example_pb2.LesionExample.DESCRIPTOR.fields
FEATURE_NAMES: tuple[str, ...] = tuple(f.name for f in _FIELDS)

_BYTES_TYPES = (_descriptor.FieldDescriptor.TYPE_STRING, _descriptor.FieldDescriptor.TYPE_BYTES)
_INT_TYPES = (_descriptor.FieldDescriptor.TYPE_INT64,)
_FLOAT_TYPES = (_descriptor.FieldDescriptor.TYPE_FLOAT,)


def _kind(field: _descriptor.FieldDescriptor) -> str:
    if field.type in _BYTES_TYPES:
        return "bytes"
    if field.type in _INT_TYPES:
        return "int64"
    if field.type in _FLOAT_TYPES:
        return "float"
    raise TypeError(f"schema field {field.name!r} has unsupported proto type {field.type}")


FEATURE_KINDS: dict[str, str] = {f.name: _kind(f) for f in _FIELDS}


def _upb_key_order(a: str, b: str) -> int:
    """protobuf's (upb's) deterministic map order: bytes ascending, but a key that is a prefix
    of another sorts after it ("label_name" before "label")."""
    ab, bb = a.encode("utf-8"), b.encode("utf-8")
    common = min(len(ab), len(bb))
    if ab[:common] != bb[:common]:
        return -1 if ab[:common] < bb[:common] else 1
    return len(bb) - len(ab)


_SORTED_NAMES = tuple(sorted(FEATURE_NAMES, key=functools.cmp_to_key(_upb_key_order)))


_SMALL_VARINTS = [bytes((i,)) for i in range(128)]


def _varint(value: int) -> bytes:
    if 0 <= value < 128:
        return _SMALL_VARINTS[value]
    value &= (1 << 64) - 1  # int64 two's complement, as protobuf writes negative values
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited field (wire type 2)."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _feature(kind: str, value: Any) -> bytes:
    """A tf.train.Feature holding one value: bytes_list (1), float_list (2) or int64_list (3)."""
    if kind == "bytes":
        if isinstance(value, str):
            raw = value.encode("utf-8")
        elif isinstance(value, (bytes, bytearray, memoryview)):
            raw = bytes(value)
        else:  # bytes(3) would silently give three zero bytes
            raise TypeError(f"bytes feature needs str or bytes, got {type(value).__name__}")
        return _field(1, _field(1, raw))
    if kind == "int64":
        number = int(value)
        if not -(1 << 63) <= number < (1 << 63):
            raise ValueError(f"int64 feature value out of range: {number}")
        return _field(3, _field(1, _varint(number)))  # packed repeated int64
    number = float(value)
    try:
        packed = struct.pack("<f", number)
    except OverflowError:  # beyond float32: protobuf stores infinity
        packed = struct.pack("<f", math.copysign(math.inf, number))
    return _field(2, b"\x0a\x04" + packed)  # packed repeated float


# Per feature, in map order: its name, the map entry's key field (field 1), its kind.
_ENTRY_HEADS = tuple((n, _field(1, n.encode("utf-8")), FEATURE_KINDS[n]) for n in _SORTED_NAMES)


def encode_example(values: Mapping[str, Any]) -> bytes:
    """Serializes one record as a tf.train.Example; every schema field must be given, no other.

    Written straight in protobuf's wire format, map entries in protobuf's deterministic order:
    byte for byte what tf.train.Example.SerializeToString(deterministic=True) gives
    (tests/test_schema.py checks it), without building the proto objects.
    """
    if len(values) != len(FEATURE_NAMES) or not all(n in values for n in FEATURE_NAMES):
        missing = set(FEATURE_NAMES) - set(values)
        extra = set(values) - set(FEATURE_NAMES)
        raise ValueError(f"record does not match schema v{SCHEMA_VERSION}: "
                         f"missing={sorted(missing)} extra={sorted(extra)}")
    entries = []
    for name, key_field, kind in _ENTRY_HEADS:
        feature = _feature(kind, values[name])
        body = key_field + b"\x12" + _varint(len(feature)) + feature
        entries.append(b"\x0a" + _varint(len(body)) + body)
    return _field(1, b"".join(entries))


def decode_example_py(serialized: bytes) -> dict[str, Any]:
    """Parses one serialized record into Python values (tests, tools); trainers use feature_spec."""
    from tensorflow.core.example import example_pb2

    example = example_pb2.Example.FromString(serialized)
    out: dict[str, Any] = {}
    for name in FEATURE_NAMES:
        feature = example.features.feature[name]
        kind = FEATURE_KINDS[name]
        if kind == "bytes":
            raw = feature.bytes_list.value[0]
            out[name] = raw if name == "image_encoded" else raw.decode("utf-8")
        elif kind == "int64":
            out[name] = int(feature.int64_list.value[0])
        else:
            out[name] = float(feature.float_list.value[0])
    return out


def feature_spec(names: tuple[str, ...] | None = None) -> dict:
    """tf.io.parse_example spec for the given feature names (all by default)."""
    import tensorflow as tf

    dtypes = {"bytes": tf.string, "int64": tf.int64, "float": tf.float32}
    wanted = FEATURE_NAMES if names is None else names
    unknown = set(wanted) - set(FEATURE_NAMES)
    if unknown:
        raise ValueError(f"unknown feature(s) {sorted(unknown)}; schema has {FEATURE_NAMES}")
    return {n: tf.io.FixedLenFeature([], dtypes[FEATURE_KINDS[n]]) for n in wanted}


def check_schema_version(found: Any, where: str = "dataset") -> None:
    """Fails fast when a dataset was written under another schema version."""
    if found != SCHEMA_VERSION:
        raise ValueError(f"{where} was written with record schema version {found!r}, but this "
                         f"code reads version {SCHEMA_VERSION}; re-run beam_jobs.preprocess")
