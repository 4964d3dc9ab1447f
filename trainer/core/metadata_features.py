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

Encoding versions (ENCODING_VERSIONS; the layout above is the same in each, so model shapes
do not change). A trained run records its version in its config (`metadata_encoding`, see
run_encoding) and every reader of the run (evaluation, diagnosis, export) encodes with it, so
a model is evaluated and served with the features it was trained on:
  1  the normalised site text compared with SITES as it is. HAM10000's `localization` words
     (back, trunk, face, ...) then all land in site_other and its "unknown" counts as a site.
  2  (ENCODING_VERSION) SITE_SYNONYMS applied after the normalisation: HAM10000's vocabulary
     mapped onto ISIC's anatom_site_general, its "unknown" made missing.

Fields (FIELDS; --metadata_fields): a run may use a subset of age, sex and site, to measure
what one field costs on a new clinic or to train for clinics that do not record it. A field
left out is encoded as missing for every record (age as MISSING_AGE, sex and site as ''), so
the layout, METADATA_DIM and the model's shape stay the same. A run records its fields in its
config (`metadata_fields`, see run_fields) beside its encoding, and its readers encode with both.
"""
from __future__ import annotations

from typing import Any, Iterable, Mapping

SITES = ("anterior torso", "head/neck", "lateral torso", "lower extremity", "oral/genital",
         "palms/soles", "posterior torso", "upper extremity", "torso")
SEXES = ("female", "male")
AGE_SCALE = 100.0
FEATURE_NAMES = (("age_scaled", "age_missing") + tuple(f"sex_{s}" for s in SEXES)
                 + ("sex_missing",) + tuple(f"site_{s}" for s in SITES)
                 + ("site_other", "site_missing"))
METADATA_DIM = len(FEATURE_NAMES)
MISSING_AGE = -1.0
ENCODING_VERSIONS = (1, 2)
ENCODING_VERSION = 2  # what new runs train with (TrainConfig.metadata_encoding's default)
LEGACY_ENCODING_VERSION = 1  # a run config without `metadata_encoding` predates version 2
FIELDS = ("age", "sex", "site")  # what --metadata_fields chooses from; all by default

# Version 2: HAM10000's `localization` vocabulary (after _normalise_text) -> ISIC's
# anatom_site_general (SITES), or '' (missing). HAM writes finer body parts where ISIC writes
# body regions; each maps to the ISIC region that contains it:
SITE_SYNONYMS = {
    "back": "posterior torso",       # the back is the posterior side of the trunk
    "chest": "anterior torso",       # chest and abdomen: the anterior side of the trunk
    "abdomen": "anterior torso",
    "trunk": "torso",                # HAM's trunk names no side: ISIC's side-less "torso"
    "face": "head/neck",             # face, scalp, neck and ear are all ISIC's head/neck
    "scalp": "head/neck",
    "neck": "head/neck",
    "ear": "head/neck",
    "genital": "oral/genital",       # ISIC groups genital with oral mucosa
    "acral": "palms/soles",          # acral skin in dermoscopy = palms and soles (ISIC's name)
    "foot": "lower extremity",       # HAM keeps soles apart (acral); the rest of the foot is
    "hand": "upper extremity",       # the limb's, as ISIC's extremities include hand and foot
    "unknown": "",                   # HAM's "site not recorded": missing, not a real site
}


def _normalise_text(text):
    import tensorflow as tf

    text = tf.strings.lower(tf.strings.strip(text))
    text = tf.strings.regex_replace(text, "_", " ")
    text = tf.strings.regex_replace(text, r"\s*/\s*", "/")
    return tf.strings.strip(tf.strings.regex_replace(text, r"\s+", " "))


def check_version(version: Any) -> int:
    """version itself when this code knows it (ENCODING_VERSIONS), else ValueError naming it."""
    if isinstance(version, bool) or version not in ENCODING_VERSIONS:
        raise ValueError(f"metadata encoding version {version!r} is unknown; this code knows "
                         f"{ENCODING_VERSIONS} (trainer.core.metadata_features)")
    return int(version)


def run_encoding(run_config: Mapping[str, Any]) -> int:
    """The encoding version a trained run's metadata must be computed with: its config's
    `metadata_encoding` (train_config.json, report.json's "config", or an export's
    serving_config "metadata"); a config without the key was written before version 2
    existed, so LEGACY_ENCODING_VERSION. ValueError for a version this code does not know."""
    return check_version(run_config.get("metadata_encoding", LEGACY_ENCODING_VERSION))


def check_fields(fields: str | Iterable[str]) -> tuple[str, ...]:
    """fields (a comma string or a sequence of names) as a tuple in FIELDS order; ValueError
    naming unknown, duplicate or empty entries, or no field at all (a model without metadata
    is trained without --use_metadata)."""
    given = fields.split(",") if isinstance(fields, str) else list(fields)
    names = [str(f).strip() for f in given]
    if not any(names):
        raise ValueError(f"metadata fields {fields!r}: name at least one of {', '.join(FIELDS)}")
    unknown = [n for n in names if n not in FIELDS]
    if unknown:
        raise ValueError(f"metadata fields {fields!r}: unknown or empty {unknown}; choose from "
                         f"{', '.join(FIELDS)}")
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"metadata fields {fields!r}: {duplicates} given more than once")
    return tuple(f for f in FIELDS if f in names)


def run_fields(run_config: Mapping[str, Any]) -> tuple[str, ...]:
    """The fields a trained run's metadata uses: its config's `metadata_fields` (a list or a
    comma string); a config without the key was written before --metadata_fields, when every
    run used all of FIELDS. ValueError for fields this code does not know."""
    return check_fields(run_config.get("metadata_fields", FIELDS))


def _canonical_site(site, version: int):
    """Normalised site text, with SITE_SYNONYMS applied from version 2 on."""
    import tensorflow as tf

    site = _normalise_text(site)
    if version >= 2:
        for synonym, general in SITE_SYNONYMS.items():
            site = tf.where(tf.equal(site, synonym), general, site)
    return site


def encode(age, sex, site, version: int = ENCODING_VERSION,
           fields: str | Iterable[str] = FIELDS):
    """age float [...] (negative = unknown), sex / site string [...] -> float32 [..., 16],
    by encoding `version` (ENCODING_VERSIONS; a trained run's own: run_encoding); a field not
    in `fields` (a run's own: run_fields) is encoded as missing, whatever its value."""
    import tensorflow as tf

    version = check_version(version)
    fields = check_fields(fields)
    if "age" not in fields:
        age = tf.fill(tf.shape(age), MISSING_AGE)
    if "sex" not in fields:
        sex = tf.fill(tf.shape(sex), "")
    if "site" not in fields:
        site = tf.fill(tf.shape(site), "")

    age = tf.cast(age, tf.float32)
    age_missing = tf.logical_or(age < 0, tf.math.is_nan(age))
    age_scaled = tf.where(age_missing, 0.0, tf.clip_by_value(age, 0.0, AGE_SCALE) / AGE_SCALE)
    sex = _normalise_text(sex)
    sex_hits = tf.stack([tf.equal(sex, s) for s in SEXES], axis=-1)
    sex_missing = tf.logical_not(tf.reduce_any(sex_hits, axis=-1))
    site = _canonical_site(site, version)
    site_hits = tf.stack([tf.equal(site, s) for s in SITES], axis=-1)
    site_missing = tf.equal(site, "")
    site_other = tf.logical_and(tf.logical_not(tf.reduce_any(site_hits, axis=-1)),
                                tf.logical_not(site_missing))
    parts = [age_scaled[..., None], tf.cast(age_missing, tf.float32)[..., None],
             tf.cast(sex_hits, tf.float32), tf.cast(sex_missing, tf.float32)[..., None],
             tf.cast(site_hits, tf.float32), tf.cast(site_other, tf.float32)[..., None],
             tf.cast(site_missing, tf.float32)[..., None]]
    return tf.concat(parts, axis=-1)


def encode_record(record, version: int = ENCODING_VERSION,
                  fields: str | Iterable[str] = FIELDS):
    """The encoding of one parsed record ({age_approx, sex, anatom_site}) with `fields`."""
    return encode(record["age_approx"], record["sex"], record["anatom_site"], version, fields)


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
