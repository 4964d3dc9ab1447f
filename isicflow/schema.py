"""The record schema, derived from proto/isicflow/v1/lesion_example.proto.

Writer (beam_jobs) and reader (trainer.core.input_pipeline) both use this module, so a feature's
name and type are defined exactly once: in the .proto.
"""
from __future__ import annotations

import pathlib
from typing import Any, Mapping

from google.protobuf import descriptor as _descriptor
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

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
# Fields marked `optional` in the .proto: written only when they hold a value, so a record
# without them keeps the bytes it had before they existed; parsed with FEATURE_DEFAULTS.
OPTIONAL_FEATURES: tuple[str, ...] = tuple(f.name for f in _FIELDS if f.has_presence)
_KIND_DEFAULTS = {"bytes": "", "int64": 0, "float": 0.0}
FEATURE_DEFAULTS: dict[str, Any] = {n: _KIND_DEFAULTS[FEATURE_KINDS[n]] for n in OPTIONAL_FEATURES}


# tf.train.Example, compiled by `make proto` from TensorFlow's own example.proto/feature.proto
# (proto/third_party/tensorflow/) into a descriptor set, loaded into a private pool: workers need no
# TensorFlow, and a process that also imports TensorFlow sees no duplicate registration.
def _example_class():
    files = descriptor_pb2.FileDescriptorSet.FromString(
        (pathlib.Path(__file__).parent / "protos" / TF_EXAMPLE_DESCRIPTORS).read_bytes())
    pool = descriptor_pool.DescriptorPool()
    for file in files.file:
        pool.Add(file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("tensorflow.Example"))


TF_EXAMPLE_DESCRIPTORS = "tf_example.binpb"
_Example = _example_class()


def _bytes(value: Any) -> bytes:
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    raise TypeError(f"bytes feature needs str or bytes, got {type(value).__name__}")  # not bytes(3)


def encode_example(values: Mapping[str, Any]) -> bytes:
    """Serializes one record as a tf.train.Example; every schema field must be given, no other
    (an OPTIONAL_FEATURES field may be left out). An optional field holding its default ("" / 0)
    is not written at all.

    Deterministic serialization (map entries in protobuf's fixed order): byte for byte what
    tf.train.Example.SerializeToString(deterministic=True) gives (tests/test_schema.py checks it).
    """
    missing = set(FEATURE_NAMES) - set(values) - set(OPTIONAL_FEATURES)
    extra = set(values) - set(FEATURE_NAMES)
    if missing or extra:
        raise ValueError(f"record does not match schema v{SCHEMA_VERSION}: "
                         f"missing={sorted(missing)} extra={sorted(extra)}")
    example = _Example()
    features = example.features.feature
    for name, kind in FEATURE_KINDS.items():
        value = values.get(name, FEATURE_DEFAULTS.get(name))
        if name in FEATURE_DEFAULTS and not value:  # "", b"", 0, 0.0: left out
            continue
        if kind == "bytes":
            features[name].bytes_list.value.append(_bytes(value))
        elif kind == "int64":  # protobuf raises "Value out of range" beyond int64
            features[name].int64_list.value.append(int(value))
        else:  # beyond float32, protobuf stores infinity
            features[name].float_list.value.append(float(value))
    return example.SerializeToString(deterministic=True)


def decode_example_py(serialized: bytes) -> dict[str, Any]:
    """Parses one serialized record into Python values (tests, tools); trainers use feature_spec.
    An optional field the record lacks comes back as its default."""
    example = _Example.FromString(serialized)
    features = example.features.feature
    out: dict[str, Any] = {}
    for name in FEATURE_NAMES:
        if name in FEATURE_DEFAULTS and name not in features:
            out[name] = FEATURE_DEFAULTS[name]
            continue
        feature = features[name]
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
    """tf.io.parse_example spec for the given feature names (all by default); an optional
    field a record lacks parses as its default."""
    import tensorflow as tf

    dtypes = {"bytes": tf.string, "int64": tf.int64, "float": tf.float32}
    wanted = FEATURE_NAMES if names is None else names
    unknown = set(wanted) - set(FEATURE_NAMES)
    if unknown:
        raise ValueError(f"unknown feature(s) {sorted(unknown)}; schema has {FEATURE_NAMES}")
    return {n: tf.io.FixedLenFeature([], dtypes[FEATURE_KINDS[n]],
                                     default_value=FEATURE_DEFAULTS.get(n))
            for n in wanted}


def check_schema_version(found: Any, where: str = "dataset") -> None:
    """Fails fast when a dataset was written under another schema version."""
    if found != SCHEMA_VERSION:
        raise ValueError(f"{where} was written with record schema version {found!r}, but this "
                         f"code reads version {SCHEMA_VERSION}; re-run beam_jobs.preprocess")
