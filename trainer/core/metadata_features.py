"""Patient metadata as a model input (--use_metadata): age, sex and anatomic site encoded as one
float32 vector, in-graph (the input pipeline's parse step and the export's serving signature
use the same function, so training and serving do not skew).

Layout (FEATURE_NAMES, METADATA_DIM = 16):
  age_scaled      clip(age, 0, 100) / 100; 0 when missing
  age_missing     1 when age_approx < 0 (the schema's unknown) or not a number
  sex_female, sex_male, sex_missing                  one-hot; anything else counts as missing
  site_<SITES...>, site_other, site_missing          one-hot over ISIC's anatom_site_general;
                                                     '' is missing, an unlisted value other
Site text is normalised first: lower case, '_' as space, spaces around '/' dropped, runs of
spaces collapsed ("Head / Neck" == "head/neck", "lower_extremity" == "lower extremity").
"""
from __future__ import annotations

SITES = ("anterior torso", "head/neck", "lateral torso", "lower extremity", "oral/genital",
         "palms/soles", "posterior torso", "upper extremity", "torso")
SEXES = ("female", "male")
AGE_SCALE = 100.0
FEATURE_NAMES = (("age_scaled", "age_missing") + tuple(f"sex_{s}" for s in SEXES)
                 + ("sex_missing",) + tuple(f"site_{s}" for s in SITES)
                 + ("site_other", "site_missing"))
METADATA_DIM = len(FEATURE_NAMES)
MISSING_AGE = -1.0


def _normalise_text(text):
    import tensorflow as tf

    text = tf.strings.lower(tf.strings.strip(text))
    text = tf.strings.regex_replace(text, "_", " ")
    text = tf.strings.regex_replace(text, r"\s*/\s*", "/")
    return tf.strings.strip(tf.strings.regex_replace(text, r"\s+", " "))


def encode(age, sex, site):
    """age float [...] (negative = unknown), sex / site string [...] -> float32 [..., 16]."""
    import tensorflow as tf

    age = tf.cast(age, tf.float32)
    age_missing = tf.logical_or(age < 0, tf.math.is_nan(age))
    age_scaled = tf.where(age_missing, 0.0, tf.clip_by_value(age, 0.0, AGE_SCALE) / AGE_SCALE)
    sex = _normalise_text(sex)
    sex_hits = tf.stack([tf.equal(sex, s) for s in SEXES], axis=-1)
    sex_missing = tf.logical_not(tf.reduce_any(sex_hits, axis=-1))
    site = _normalise_text(site)
    site_hits = tf.stack([tf.equal(site, s) for s in SITES], axis=-1)
    site_missing = tf.equal(site, "")
    site_other = tf.logical_and(tf.logical_not(tf.reduce_any(site_hits, axis=-1)),
                                tf.logical_not(site_missing))
    parts = [age_scaled[..., None], tf.cast(age_missing, tf.float32)[..., None],
             tf.cast(sex_hits, tf.float32), tf.cast(sex_missing, tf.float32)[..., None],
             tf.cast(site_hits, tf.float32), tf.cast(site_other, tf.float32)[..., None],
             tf.cast(site_missing, tf.float32)[..., None]]
    return tf.concat(parts, axis=-1)


def encode_record(record):
    """The encoding of one parsed record ({age_approx, sex, anatom_site})."""
    return encode(record["age_approx"], record["sex"], record["anatom_site"])


def with_metadata_input(model, head_units: int = 1):
    """The image model with a second input `metadata` [B, 16] concatenated to its image features
    (the layer before its output) and a new float32 sigmoid output."""
    import keras

    features = model.layers[-2].output
    metadata = keras.Input((METADATA_DIM,), name="metadata")
    x = keras.layers.Concatenate(name="image_and_metadata")(
        [features, keras.layers.Dense(16, activation="relu", name="metadata_dense")(metadata)])
    out = keras.layers.Dense(head_units, activation="sigmoid", dtype="float32",
                             name="probability")(x)
    return keras.Model([model.inputs[0], metadata], out, name=model.name + "_metadata")
