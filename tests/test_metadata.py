"""The internal record survives the JSON lines file the launcher hands the pipeline."""
import pytest

from isicflow.metadata import LesionRecord, Rejection


def test_lesion_record_json_round_trip_keeps_types():
    full = LesionRecord(image_id="ISIC_0000001", image_path="gs://b/x/ISIC_0000001.jpg",
                        label="malignant", diagnosis="melanoma", patient_id="P1", lesion_id="L1",
                        age_approx=42.5, sex="female", anatom_site="back",
                        image_type="dermoscopic", source_collection="UDA-1",
                        attribution="ISIC, \"quoted\"", license="CC-0",
                        original_width=1022, original_height=767)
    sparse = LesionRecord(image_id="x", image_path="/a/b\nc.jpg")
    for record in (full, sparse):
        line = record.to_json()
        assert "\n" not in line  # one record per line, whatever the cells hold
        assert LesionRecord.from_json(line) == record
    assert LesionRecord.from_json(sparse.to_json()).age_approx is None


def test_rejection_json_round_trip_and_bad_label_fails_fast():
    rejection = Rejection("/p/x.jpg", "x", "corrupt_image", "OSError: truncated", "rejected")
    assert Rejection.from_json(rejection.to_json()) == rejection
    with pytest.raises(ValueError, match="label"):
        LesionRecord.from_json('{"image_id": "x", "image_path": "p", "label": "maybe"}')


def test_class_names_follow_the_label_index():
    from isicflow.metadata import CLASS_NAMES, LABEL_INDEX, LABEL_NAMES

    assert [LABEL_INDEX[name] for name in CLASS_NAMES] == list(range(len(CLASS_NAMES)))
    assert set(LABEL_NAMES) - set(CLASS_NAMES) == {n for n in LABEL_NAMES if LABEL_INDEX[n] < 0}


def test_diagnosis_confirmation_reads_the_archive_column_or_hams_codes():
    from isicflow.metadata import diagnosis_confirmation

    assert diagnosis_confirmation('{"dx_type":"histo"}') == "histopathology"
    assert diagnosis_confirmation(b'{"dx_type":"FOLLOW_UP"}') == "serial imaging showing no change"
    assert diagnosis_confirmation({"dx_type": "consensus"}) == "single image expert consensus"
    # the archive's own words pass through; its column wins over HAM's
    assert diagnosis_confirmation({"diagnosis_confirm_type": "histopathology",
                                   "dx_type": "follow_up"}) == "histopathology"
    assert diagnosis_confirmation({"diagnosis_confirm_type": "",
                                   "dx_type": "confocal"}) == \
        "confocal microscopy with consensus dermoscopy"
    assert diagnosis_confirmation({"dx_type": "biopsy, 2019"}) == "biopsy, 2019"  # as given
    assert diagnosis_confirmation("") == "" and diagnosis_confirmation({"site": "back"}) == ""
