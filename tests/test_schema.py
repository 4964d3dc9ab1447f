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


def _record(**over):
    values = {n: {"bytes": "x", "int64": 1, "float": 2.5}[k] for n, k in schema.FEATURE_KINDS.items()}
    values["image_encoded"] = b"\x00\xff"
    values.update(over)
    return values


def test_encode_decode_round_trip():
    values = _record(image_id="ISIC_0000001", age_approx=-1.0, label=-1)
    back = schema.decode_example_py(schema.encode_example(values))
    assert back == values


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


def test_version_mismatch_is_a_clear_error():
    schema.check_schema_version(schema.SCHEMA_VERSION)
    with pytest.raises(ValueError, match="schema version 99"):
        schema.check_schema_version(99)
