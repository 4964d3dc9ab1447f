"""The .proto is the single source of truth; the generated code and feature spec follow it."""
import pathlib
import subprocess
import sys

import pytest

from isicflow import schema

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_generated_code_matches_proto(tmp_path):
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", "-I", str(REPO / "proto/isicflow/v1"),
                    f"--python_out={tmp_path}", "lesion_example.proto"], check=True)
    fresh = (tmp_path / "lesion_example_pb2.py").read_text()
    committed = (REPO / "isicflow/protos/lesion_example_pb2.py").read_text()
    assert fresh == committed, "run `make proto` after editing proto/"
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", "-I", str(REPO / "proto/third_party"),
                    "--include_imports", f"--descriptor_set_out={tmp_path / 'tf_example.binpb'}",
                    str(REPO / "proto/third_party/tensorflow/core/example/example.proto")], check=True)
    fresh_tf = (tmp_path / "tf_example.binpb").read_bytes()
    assert fresh_tf == (REPO / "isicflow/protos" / schema.TF_EXAMPLE_DESCRIPTORS).read_bytes(), \
        "run `make proto` after editing proto/"


def test_encoder_and_tensorflow_share_a_process_in_either_import_order():
    """Our tf.train.Example lives in a private descriptor pool: importing TensorFlow before or
    after isicflow.schema registers nothing twice, and both serialize the same bytes."""
    for first, second in (("isicflow.schema", "tensorflow"), ("tensorflow", "isicflow.schema")):
        code = (f"import {first}, {second}; import tensorflow as tf; from isicflow import schema\n"
                "e = tf.train.Example(); e.features.feature['x'].int64_list.value.append(5)\n"
                "o = schema._Example(); o.features.feature['x'].int64_list.value.append(5)\n"
                "assert e.SerializeToString(deterministic=True) == o.SerializeToString()\n"
                "print('ok')")
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                cwd=str(REPO))
        assert result.stdout.strip() == "ok", result.stderr[-2000:]


def _record(**over):
    values = {n: {"bytes": "x", "int64": 1, "float": 2.5}[k] for n, k in schema.FEATURE_KINDS.items()}
    values["image_encoded"] = b"\x00\xff"
    values.update(over)
    return values


def test_encode_decode_round_trip():
    values = _record(image_id="ISIC_0000001", age_approx=-1.0, label=-1)
    back = schema.decode_example_py(schema.encode_example(values))
    assert back == values


def _proto_reference(values) -> bytes:
    """The same record built with TensorFlow's own protobuf classes."""
    from tensorflow.core.example import example_pb2, feature_pb2

    feature = {}
    for name, kind in schema.FEATURE_KINDS.items():
        value = values.get(name)
        if name in schema.OPTIONAL_FEATURES and not value:
            continue  # an optional field holding its default is not written
        if kind == "bytes":
            raw = value.encode("utf-8") if isinstance(value, str) else bytes(value)
            feature[name] = feature_pb2.Feature(bytes_list=feature_pb2.BytesList(value=[raw]))
        elif kind == "int64":
            feature[name] = feature_pb2.Feature(int64_list=feature_pb2.Int64List(value=[value]))
        else:
            feature[name] = feature_pb2.Feature(float_list=feature_pb2.FloatList(value=[value]))
    return example_pb2.Example(features=feature_pb2.Features(feature=feature)).SerializeToString(
        deterministic=True)


def test_encoder_is_byte_identical_to_tensorflows_protobuf():
    """Against protobuf's upb backend (what protobuf 4.25 uses by default); the pure-Python
    backend orders map keys differently, equally valid."""
    import random

    from google.protobuf.internal import api_implementation

    if api_implementation.Type() != "upb":
        pytest.skip(f"protobuf backend {api_implementation.Type()!r}, not upb")

    rng = random.Random(0)
    cases = [_record(), _record(label=-1, age_approx=-1.0, image_encoded=b""),
             _record(image_id="ISIC_\u00e9\u4e2d", height=2**40, width=0, image_encoded=bytes(300)),
             _record(original_width=-(2**63), original_height=2**63 - 1, age_approx=1e30)]
    for _ in range(20):
        cases.append({n: {"bytes": lambda: "".join(rng.choice("ab\u00fc/ ") for _ in range(rng.randrange(0, 200))),
                          "int64": lambda: rng.randrange(-2**63, 2**63),
                          "float": lambda: rng.uniform(-1e6, 1e6)}[k]()
                      for n, k in schema.FEATURE_KINDS.items()})
    for values in cases:
        assert schema.encode_example(values) == _proto_reference(values)
    huge = _record(age_approx=1e39)  # beyond float32, as protobuf: infinity
    assert schema.encode_example(huge) == _proto_reference(huge)
    with pytest.raises(ValueError, match="out of range"):
        schema.encode_example(_record(height=2**63))
    with pytest.raises(TypeError, match="str or bytes"):
        schema.encode_example(_record(image_id=3))  # bytes(3) would be three zero bytes


def test_encode_is_deterministic():
    assert schema.encode_example(_record()) == schema.encode_example(_record())


def test_encode_rejects_missing_and_extra_fields():
    values = _record()
    del values["split"]
    with pytest.raises(ValueError, match="missing=\\['split'\\]"):
        schema.encode_example(values)
    with pytest.raises(ValueError, match="extra=\\['bogus'\\]"):
        schema.encode_example(_record(bogus=1))


def test_tf_parser_reads_what_writer_wrote():
    import tensorflow as tf

    serialized = schema.encode_example(_record(image_id="abc", height=7, age_approx=42.5))
    parsed = tf.io.parse_single_example(serialized, schema.feature_spec())
    assert parsed["image_id"].numpy() == b"abc"
    assert parsed["height"].numpy() == 7
    assert parsed["age_approx"].numpy() == pytest.approx(42.5)
    assert set(parsed) == set(schema.FEATURE_NAMES)


def test_optional_fields_are_left_out_when_empty_and_read_back_as_defaults():
    """A record without fitzpatrick_skin_type / extra_metadata_json is byte for byte what the
    schema wrote before they existed: older datasets and new ones without them read alike."""
    import tensorflow as tf

    assert set(schema.OPTIONAL_FEATURES) == {"fitzpatrick_skin_type", "extra_metadata_json"}
    base = {n: v for n, v in _record().items() if n not in schema.OPTIONAL_FEATURES}
    empty = dict(base, fitzpatrick_skin_type="", extra_metadata_json="")
    assert schema.encode_example(empty) == schema.encode_example(base)
    assert "fitzpatrick_skin_type" not in schema._Example.FromString(
        schema.encode_example(empty)).features.feature
    assert schema.decode_example_py(schema.encode_example(base)) == empty
    parsed = tf.io.parse_single_example(schema.encode_example(base), schema.feature_spec())
    assert parsed["fitzpatrick_skin_type"].numpy() == b""
    assert parsed["extra_metadata_json"].numpy() == b""
    full = dict(base, fitzpatrick_skin_type="IV", extra_metadata_json='{"a":"b"}')
    assert schema.decode_example_py(schema.encode_example(full)) == full
    parsed = tf.io.parse_single_example(schema.encode_example(full), schema.feature_spec())
    assert parsed["fitzpatrick_skin_type"].numpy() == b"IV"
    with pytest.raises(ValueError, match="missing=\\['split'\\]"):
        schema.encode_example({n: v for n, v in base.items() if n != "split"})


def test_version_mismatch_is_a_clear_error():
    schema.check_schema_version(schema.SCHEMA_VERSION)
    with pytest.raises(ValueError, match="schema version 99"):
        schema.check_schema_version(99)
