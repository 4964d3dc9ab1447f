"""--use_metadata's encoding of age, sex and anatomic site: missing values explicit."""
import numpy as np

from trainer.core import metadata_features as mf


def _row(vec, prefix):
    return {n: v for n, v in zip(mf.FEATURE_NAMES, vec) if n.startswith(prefix)}


def test_encoding_of_known_and_missing_values():
    out = mf.encode(np.array([45.0, -1.0, 130.0, np.nan], np.float32),
                    np.array(["female", "", "MALE ", "unknown"]),
                    np.array(["Head / Neck", "", "lower_extremity", "elbow"])).numpy()
    assert out.shape == (4, mf.METADATA_DIM) == (4, 16)
    np.testing.assert_allclose(out[:, 0], [0.45, 0.0, 1.0, 0.0])
    np.testing.assert_array_equal(out[:, 1], [0, 1, 0, 1])  # age missing
    assert _row(out[0], "sex_") == {"sex_female": 1, "sex_male": 0, "sex_missing": 0}
    assert _row(out[1], "sex_") == {"sex_female": 0, "sex_male": 0, "sex_missing": 1}
    assert _row(out[2], "sex_")["sex_male"] == 1
    assert _row(out[3], "sex_")["sex_missing"] == 1
    sites = [{k for k, v in _row(r, "site_").items() if v} for r in out]
    assert sites == [{"site_head/neck"}, {"site_missing"}, {"site_lower extremity"},
                     {"site_other"}]
    assert np.all(out[:, 2:5].sum(axis=1) == 1) and np.all(out[:, 5:].sum(axis=1) == 1)
