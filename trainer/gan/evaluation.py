"""The GAN evaluation (the program is trainer.gan.evaluate; trainer.gan.curve scores checkpoints
with the same pieces). No flags here.

evaluate() writes to its output folder: gan_eval.json, gan_eval.md, pca.png (the study's figure:
real vs generated on the first factorial plane), real_vs_generated.png, interpolation.png and
closest_pairs.png. Metrics: FID and KID on a named feature extractor (with the same numbers
for held-out real images as the floor a perfect generator would reach at this sample size),
a classifier two-sample test, and a memorization check against the training split.

A diagnosis-conditional run (gan_config.json lists "classes") is scored overall, its generated
images drawn in the train split's class shares against every train image of a known diagnosis,
and per class: each class's generated images against that class's real images (FID, KID, C2ST,
memorization, each beside that class's held-out floor), with real_vs_generated_<class>.png.
Each class is generated once: the overall set takes the first images of each class's draw.
With a classifier (a trainer.cnn --task=diagnosis run or export with the GAN's classes) each
class's generated images are also classified: class_agreement.
"""
from __future__ import annotations

import os

import numpy as np
from absl import logging

MEMORIZATION_SIDE = 32
MIN_CLASS_TRAIN = 4  # a class with fewer train images is not scored on its own


def scored_draws(train_counts, num: int) -> list[int]:
    """Per class, `num` images to draw for its own scores when it has at least MIN_CLASS_TRAIN
    train images, else 0 (the class is skipped): evaluate's and the curve's one rule."""
    return [num if int(n) >= MIN_CLASS_TRAIN else 0 for n in train_counts]


def load_real(data_dir: str, splits, image_size: int, limit: int) -> np.ndarray:
    """uint8 images of the given splits (all labels), in manifest order, at most `limit`.
    A split the dataset lacks, or an empty one, adds no images (logged)."""
    return _read_real(data_dir, splits, image_size, None, limit)[0]


def load_real_by_class(data_dir: str, splits, image_size: int, mapping: dict,
                       limit: int) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 images, class index) of the given splits' records of a known diagnosis, classes
    as `mapping` (trainer.cnn.diagnosis) fixes them; at most `limit` images per class. A split
    the dataset lacks, or one without such records, adds none (logged)."""
    return _read_real(data_dir, splits, image_size, mapping, limit)


def _read_real(data_dir: str, splits, image_size: int, mapping: dict | None,
               limit: int) -> tuple[np.ndarray, np.ndarray]:
    """The one reader of load_real and load_real_by_class: (uint8 images, class index) in
    manifest order, the first `limit` of each class. Without `mapping` every record is one
    class (index 0), so `limit` caps the total; reading stops once every class has its
    `limit`."""
    from isicflow import dataset as dataset_lib
    from trainer.cnn import diagnosis
    from trainer.core import input_pipeline

    manifest = dataset_lib.read_manifest(data_dir)
    present = manifest["datasets"].get(str(image_size), {})
    num_classes = 1 if mapping is None else len(mapping["classes"])
    images, labels = [], []
    seen = np.zeros(num_classes, np.int64)
    for split in splits:
        if mapping is None:
            if int(present.get(split, {}).get("records", 0)) == 0:
                logging.warning("%s: no %s images at %dpx", data_dir, split, image_size)
                continue
            ds = input_pipeline.make_dataset(data_dir, split, image_size=image_size,
                                             batch_size=64, training=False, labels="all",
                                             deterministic=True, as_uint8=True,
                                             manifest=manifest)
        else:
            if int(present.get(split, {}).get("records", 0)) == 0 or not \
                    diagnosis.split_records(data_dir, split, image_size, mapping, manifest)[0]:
                logging.warning("%s: no %s images of a known diagnosis at %dpx", data_dir,
                                split, image_size)
                continue
            ds = diagnosis.make_dataset(data_dir, split, mapping, image_size=image_size,
                                        batch_size=64, training=False, deterministic=True,
                                        as_uint8=True, manifest=manifest)
        for x, y in ds:
            images.append(x.numpy())
            labels.append(np.zeros(len(images[-1]), np.int64) if mapping is None
                          else y.numpy().astype(np.int64))
            seen += np.bincount(labels[-1], minlength=num_classes)
            if np.all(seen >= limit):
                break
        if np.all(seen >= limit):
            break
    if not images:
        return np.zeros((0, image_size, image_size, 3), np.uint8), np.zeros((0,), np.int64)
    x, y = np.concatenate(images), np.concatenate(labels)
    keep = np.sort(np.concatenate([np.flatnonzero(y == k)[:limit] for k in np.unique(y)]))
    return x[keep], y[keep]


def allocate(num: int, shares) -> list[int]:
    """num split over classes in proportion to `shares` (largest remainders; ties to the later
    class, so two equal shares give num // 2 and the rest, as binary runs always had)."""
    shares = np.asarray(shares, np.float64)
    if num < 0 or shares.ndim != 1 or not len(shares) or np.any(shares < 0) or not shares.sum():
        raise ValueError(f"need num >= 0 and non-negative shares with a positive sum, got "
                         f"{num} and {shares.tolist()}")
    raw = num * shares / shares.sum()
    counts = np.floor(raw).astype(int)
    order = sorted(range(len(raw)), key=lambda k: (-(raw[k] - counts[k]), -k))
    for k in order[:num - int(counts.sum())]:
        counts[k] += 1
    return counts.tolist()


def class_shares(mapping: dict | None) -> list[float] | None:
    """The train split's share of each class of a diagnosis-conditional run (None otherwise)."""
    if mapping is None:
        return None
    counts = [float(mapping["train_counts"][c]) for c in mapping["classes"]]
    return [c / sum(counts) for c in counts]


def generate_set(generator, arch: dict, num: int, seed: int, shares=None) -> np.ndarray:
    """num generated images; a conditional generator's split over its classes in `shares`
    (default equal), class k drawn with seed + k."""
    from trainer.gan import models as gan_models
    from trainer.gan import sampling

    if not arch["conditional"]:
        return sampling.generate(generator, arch, num, seed=seed)
    k = gan_models.num_classes_of(arch)
    counts = allocate(num, shares if shares is not None else [1.0] * k)
    return np.concatenate(generate_by_class(generator, arch, counts, seed))


def generate_by_class(generator, arch: dict, counts, seed: int) -> list[np.ndarray]:
    """counts[k] images of each class k of a conditional generator, class k drawn with
    seed + k. A class's latents are one seeded stream, so its first n images are the same
    whatever count is asked: a smaller draw is a prefix of a larger one (see evaluate)."""
    from trainer.gan import sampling

    size = arch["image_size"]
    return [sampling.generate(generator, arch, n, label=label, seed=seed + label) if n
            else np.zeros((0, size, size, 3), np.uint8) for label, n in enumerate(counts)]


def interpolation_strip(generator, arch: dict, steps: int = 8, seed: int = 0) -> np.ndarray:
    """Rows of images along straight lines between two latent points (one row per class when
    conditional, else three rows)."""
    from trainer.core.report import tile_images
    from trainer.gan import models as gan_models

    rng = np.random.default_rng(seed)
    labels = list(range(gan_models.num_classes_of(arch))) if arch["conditional"] \
        else [None, None, None]
    rows = []
    for label in labels:
        a, b = rng.standard_normal((2, arch["latent_dim"])).astype(np.float32)
        t = np.linspace(0.0, 1.0, steps, dtype=np.float32)[:, None]
        z = (1 - t) * a + t * b
        inputs = [z, np.full((steps, 1), label, np.int32)] if label is not None else z
        rows.append(gan_models.to_uint8(generator(inputs, training=False)))
    return tile_images(np.concatenate(rows), columns=steps)


def distribution_metrics(f_real: np.ndarray, f_other: np.ndarray, seed: int,
                         kid_size: int | None = None) -> dict:
    """FID, KID and the classifier two-sample test of one feature set against the real one."""
    from trainer.gan import metrics as gan_metrics

    kid_size = kid_size or min(1000, len(f_real), len(f_other))
    return {"fid": gan_metrics.fid(f_real, f_other),
            "kid": dict(zip(("mean", "std"), gan_metrics.kid(
                f_real, f_other, subset_size=min(kid_size, len(f_other)), seed=seed))),
            "kid_subset_size": kid_size,
            "c2st": gan_metrics.classifier_two_sample_test(f_real, f_other, seed=seed)}


def c2st_cues() -> dict:
    """Interpretable cues for "what gives generated images away": name -> image statistics."""
    from trainer.gan import features as gan_features

    return {"colour": gan_features.colour_statistics,      # per-image RGB mean and std
            "sharpness": gan_features.sharpness_statistics,  # |Laplacian| mean, p90, max
            "layout": lambda images: gan_features.pixel_features(images, 8)}  # 8x8 pixels


def cue_features(images: np.ndarray) -> dict[str, np.ndarray]:
    """{cue: that cue's statistics of each image}, for c2st_by_cue."""
    return {name: describe(images) for name, describe in c2st_cues().items()}


def c2st_by_cue(train: dict, generated: dict, heldout: dict | None, seed: int) -> dict:
    """{cue: {"generated": C2ST accuracy vs train, "heldout_floor": the same for held-out real
    images (None without them)}}: which kind of statistic separates the sets. Each argument is
    a cue_features() dict, so a caller scoring many generators computes train's once."""
    from trainer.gan import metrics as gan_metrics

    def accuracy(f_train, other) -> float:
        return gan_metrics.classifier_two_sample_test(f_train, other, seed=seed)["accuracy"]

    return {name: {"generated": accuracy(f_train, generated[name]),
                   "heldout_floor": accuracy(f_train, heldout[name]) if heldout else None}
            for name, f_train in train.items()}


def memorization_check(generated, heldout, train, space: str, extractor_name: str
                       ) -> tuple[dict, np.ndarray, np.ndarray]:
    """Share of generated images nearer a training image than the real 1st percentile.

    Each set is (uint8 images, features); space 'pixels' compares 32x32 pixels (RMS distance
    in [0, 1] units), 'features' the extractor's. Returns (report, distances, nearest index)."""
    from trainer.gan import features as gan_features
    from trainer.gan import metrics as gan_metrics

    if space == "pixels":
        def embed(images: np.ndarray) -> np.ndarray:
            flat = gan_features.pixel_features(images, MEMORIZATION_SIDE)
            return flat / np.sqrt(flat.shape[1])  # distances become RMS, in [0, 1] units
        q_gen, q_held, ref = embed(generated[0]), embed(heldout[0]), embed(train[0])
        space_name = f"pixels {MEMORIZATION_SIDE}x{MEMORIZATION_SIDE}, RMS distance"
    else:
        q_gen, q_held, ref, space_name = generated[1], heldout[1], train[1], extractor_name
    gen_d, gen_i = gan_metrics.nearest_neighbour(q_gen, ref)
    held_d, _ = gan_metrics.nearest_neighbour(q_held, ref)
    return ({"space": space_name, **gan_metrics.memorization(gen_d, held_d, 1.0)}, gen_d,
            gen_i)


def per_class_metrics(generated_by_class, arch: dict, real: tuple, heldout: tuple, extract,
                      *, num: int, seed: int, memorization_space: str, extractor_name: str,
                      output: str) -> dict:
    """{class: FID, KID, C2ST of `num` images generated for it against that class's real
    images, the same for its held-out real images (the floor), memorization against its train
    images, its counts and real_vs_generated_<class>.png}. generated_by_class[k]: class k's
    generated images (generate_by_class; the first `num` are scored, and a class with under
    MIN_CLASS_TRAIN train images is skipped without them); real/heldout: (uint8 images, class
    index, features or None)."""
    from trainer.gan import plots as gan_plots
    from trainer.gan import sampling

    train, train_y, f_train = real
    held, held_y, f_held = heldout
    report = {}
    for k, name in enumerate(sampling.class_names(arch)):
        in_train, in_held = train_y == k, held_y == k
        n_train, n_held = int(in_train.sum()), int(in_held.sum())
        entry: dict = {"counts": {"train": n_train, "heldout": n_held, "generated": num}}
        report[name] = entry
        if n_train < MIN_CLASS_TRAIN:
            entry["skipped"] = (f"only {n_train} train images of {name}; need at least "
                                f"{MIN_CLASS_TRAIN}")
            continue
        generated = generated_by_class[k][:num]
        if len(generated) != num:
            raise ValueError(f"{name}: {len(generated)} generated images given, {num} needed")
        f_gen = extract(generated)
        entry.update(distribution_metrics(f_train[in_train], f_gen, seed))
        if f_held is not None and n_held >= 4:
            entry["heldout_floor"] = distribution_metrics(
                f_train[in_train], f_held[in_held], seed, kid_size=entry["kid_subset_size"])
            del entry["heldout_floor"]["kid_subset_size"]
            entry["memorization"], _, _ = memorization_check(
                (generated, f_gen), (held[in_held], f_held[in_held]),
                (train[in_train], f_train[in_train]), memorization_space, extractor_name)
        else:
            entry["memorization"] = {"skipped": f"only {n_held} held-out images of {name}; "
                                                "need at least 4"}
        shown = np.random.default_rng(seed).permutation(n_train)[:16]
        entry["grid"] = f"real_vs_generated_{name}.png"
        gan_plots.save_real_vs_generated(train[in_train][shown], generated[:16],
                                         os.path.join(output, entry["grid"]))
    return report


def classifier_classes(path: str) -> tuple[str, list[str]]:
    """(its model.keras, its classes) of a trainer.cnn diagnosis run or export folder; ValueError
    naming the folder when it is neither."""
    from trainer.cnn import diagnosis_scoring
    from trainer.cnn.constants import KERAS_NAME

    keras_path = os.path.join(path, KERAS_NAME)
    mapping = diagnosis_scoring.mapping_of_folder(path) if os.path.isdir(path) else None
    if mapping is None or not os.path.isfile(keras_path):
        raise ValueError(f"classifier {path!r}: not a trainer.cnn --task=diagnosis run or export "
                         f"folder ({KERAS_NAME} and classes.json or serving_config.json)")
    return keras_path, list(mapping["classes"])


def check_classifier(path: str, arch: dict) -> str:
    """The classifier's model.keras, once the GAN is known to be conditional on diagnosis and
    the classifier to name its classes in its order (a class index means the same to both);
    ValueError naming what is missing or both lists otherwise."""
    if not arch.get("classes"):
        raise ValueError(f"classifier {path!r} given, but the GAN is not conditional on "
                         "diagnosis: there is no class to agree with")
    keras_path, classes = classifier_classes(path)
    if classes != list(arch.get("classes") or []):
        raise ValueError(f"classifier {path!r} has the classes {classes}; the GAN generates "
                         f"{arch.get('classes')}: train it on the GAN's data with the GAN's "
                         "--gan_min_class_records as --min_class_records")
    return keras_path


def class_agreement(probabilities, classes, generated_by_class, num: int,
                    heldout: tuple[np.ndarray, np.ndarray]) -> dict:
    """Does a class's generated image look like that class? A classifier trained on real images
    (`probabilities`: uint8 images -> [N, K]) labels the first `num` generated images of each
    class; "generated" is trainer.cnn.diagnosis.split_metrics with the class asked of the
    generator as the truth, so per_class_recall[c] is the share of class c's images that the
    classifier calls c (the agreement), and the confusion matrix says what they look like
    instead. "heldout_real" is the same classifier on the held-out real images (uint8, class
    index), through the same resize: the agreement a generator whose images were real would
    reach. C2ST and FID compare a class with its own real images only, and miss a class drawn
    as another (e.g. melanomas that look like keratoses). A class with fewer than `num`
    generated images (per_class_metrics skipped it) is listed in "skipped", its recall None,
    and its real images are left out of "heldout_real" too, so both balanced accuracies count
    the same classes."""
    from trainer.cnn import diagnosis

    scored = [k for k in range(len(classes)) if len(generated_by_class[k]) >= num]
    if not scored:
        raise ValueError(f"class agreement: no class has {num} generated images")
    images = np.concatenate([generated_by_class[k][:num] for k in scored])
    intended = np.repeat(scored, num)
    report = {"generated_per_class": num,
              "skipped": [classes[k] for k in range(len(classes)) if k not in scored],
              "generated": diagnosis.split_metrics(intended, probabilities(images), classes)}
    held, held_y = heldout
    scored_real = np.isin(held_y, scored)  # the same classes in both balanced accuracies
    if np.any(scored_real):
        report["heldout_real"] = diagnosis.split_metrics(
            held_y[scored_real], probabilities(held[scored_real]), classes)
    return report


def evaluate(model: str, data_dir: str, output: str, *, num_generated: int = 200,
             max_real: int = 5000, train_split: str = "train",
             heldout_splits=("validation", "test"), feature_extractor: str = "auto",
             inception_weights: str = "", feature_model: str = "",
             feature_model_range=(0.0, 1.0), memorization_space: str = "pixels",
             seed: int = 0, classifier: str = "") -> dict:
    """Runs every check of the generator in `model` (a run folder, its checkpoints/ or a
    checkpoint prefix) against the real images of `data_dir`, writes the report files to
    `output` and returns the JSON report. classifier (a diagnosis-conditional GAN only): a
    trainer.cnn diagnosis folder with the GAN's classes, for class_agreement."""
    from trainer.core import run_folder
    from trainer.gan import features as gan_features
    from trainer.gan import metrics as gan_metrics
    from trainer.gan import plots as gan_plots
    from trainer.gan import sampling

    generator, arch = sampling.load_generator(model)
    size = arch["image_size"]
    mapping = sampling.read_class_mapping(model) if arch.get("classes") else None
    if arch.get("classes") and (mapping is None or mapping["classes"] != arch["classes"]):
        raise ValueError(f"{model}: gan_config.json lists the classes {arch['classes']} but "
                         f"its classes.json holds {mapping and mapping['classes']}")
    classify = (gan_features.classifier_probabilities(check_classifier(classifier, arch))
                if classifier else None)  # loaded (and a two-input model refused) up front
    if mapping is not None:  # the images of the run's classes, max_real per class
        train, train_y = load_real_by_class(data_dir, [train_split], size, mapping, max_real)
        heldout, held_y = load_real_by_class(data_dir, list(heldout_splits), size, mapping,
                                             max_real)
    else:
        train = load_real(data_dir, [train_split], size, max_real)
        heldout = load_real(data_dir, list(heldout_splits), size, max_real)
    if len(train) < 4:
        raise ValueError(f"{data_dir}: split {train_split!r} at {size}px has {len(train)} "
                         "images; need at least 4")
    if mapping is not None:
        # Each class drawn once, for both its own scores (num_generated images) and the overall
        # set in train's class shares: generate_by_class's prefix is that smaller draw.
        overall = allocate(num_generated, class_shares(mapping))
        own = scored_draws([np.sum(train_y == k) for k in range(len(overall))], num_generated)
        by_class = generate_by_class(generator, arch, [max(n, m) for n, m in zip(overall, own)],
                                     seed)
        generated = np.concatenate([images[:n] for images, n in zip(by_class, overall)])
    else:
        generated = generate_set(generator, arch, num_generated, seed)
    extract, extractor_name = gan_features.make_extractor(
        feature_extractor, inception_weights=inception_weights, feature_model=feature_model,
        feature_model_range=tuple(float(v) for v in feature_model_range), seed=seed)
    f_train, f_gen = extract(train), extract(generated)
    report: dict = {
        "checkpoint": os.path.abspath(sampling.resolve_checkpoint(model)[0]),
        "architecture": arch,
        "real_data_dir": os.path.abspath(data_dir), "train_split": train_split,
        "counts": {"train": len(train), "heldout": len(heldout), "generated": len(generated)},
        "feature_extractor": extractor_name, "feature_dim": int(f_train.shape[1]),
        **distribution_metrics(f_train, f_gen, seed),
    }
    f_held = extract(heldout) if len(heldout) >= 4 else None
    if f_held is not None:  # what real images the GAN never saw score: the floor at this n
        report["heldout_floor"] = distribution_metrics(f_train, f_held, seed,
                                                       kid_size=report["kid_subset_size"])
        del report["heldout_floor"]["kid_subset_size"]
        report["memorization"], gen_d, gen_i = memorization_check(
            (generated, f_gen), (heldout, f_held), (train, f_train), memorization_space,
            extractor_name)
        closest = np.argsort(gen_d)[:8]
        gan_plots.save_pairs(generated[closest], train[gen_i[closest]], gen_d[closest],
                             os.path.join(output, "closest_pairs.png"))
    else:
        report["memorization"] = {"skipped": f"only {len(heldout)} held-out images in "
                                             f"{list(heldout_splits)}; need at least 4"}
    report["c2st_by_cue"] = c2st_by_cue(
        cue_features(train), cue_features(generated),
        cue_features(heldout) if len(heldout) >= 4 else None, seed)
    # Seeded samples of each set for the PCA and the grid: the first images in id order are one
    # collection only (in the shared data, smeared uda1 scans), and generated ones come by class.
    shown = np.random.default_rng(seed)
    train_shown = train[shown.permutation(len(train))]
    generated_shown = generated[shown.permutation(len(generated))]
    n_pca = min(len(train), len(generated))
    points, share = gan_metrics.pca_plane(np.concatenate(
        [train_shown[:n_pca], generated_shown[:n_pca]]).reshape(2 * n_pca, -1).astype(
            np.float64) / 255.0)
    report["pca"] = {"images_per_set": n_pca, "space": f"pixels {size}x{size}",
                     "explained_variance": [float(s) for s in share]}
    os.makedirs(output, exist_ok=True)
    if mapping is not None:
        report["classes"] = list(mapping["classes"])
        report["generated_per_class_overall"] = dict(zip(mapping["classes"], overall))
        report["grouped_as_other"] = mapping["grouped_as_other"]
        report["per_class"] = per_class_metrics(
            by_class, arch, (train, train_y, f_train), (heldout, held_y, f_held), extract,
            num=num_generated, seed=seed, memorization_space=memorization_space,
            extractor_name=extractor_name, output=output)
        if classify is not None:
            probabilities, side = classify
            report["class_agreement"] = {
                "classifier": os.path.abspath(classifier), "classifier_side": side,
                **class_agreement(probabilities, mapping["classes"], by_class, num_generated,
                                  (heldout, held_y))}
    gan_plots.save_pca(points[:n_pca], points[n_pca:], share, os.path.join(output, "pca.png"))
    gan_plots.save_real_vs_generated(train_shown[:16], generated_shown[:16],
                                     os.path.join(output, "real_vs_generated.png"))
    gan_plots.save_png(interpolation_strip(generator, arch, seed=seed),
                       os.path.join(output, "interpolation.png"))
    run_folder.write_json(os.path.join(output, "gan_eval.json"), report)
    with open(os.path.join(output, "gan_eval.md"), "w", encoding="utf-8") as f:
        f.write(gan_plots.markdown_report(report))
    return report
