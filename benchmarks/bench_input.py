"""Input benchmark: `python -m benchmarks.bench_input --input=DIR --workdir=out/bench-input`.

Shows, on the same images and in one run, images/s of the loaders a user could pick:
  (1) keras ImageDataGenerator.flow_from_directory, as the 2020 study used it (11 images/s there);
  (2) keras.utils.image_dataset_from_directory + rescale map + prefetch (today's Keras advice);
  (3) this project's TFRecord stream (trainer.core.input_pipeline, training order, no augmentation)
      as the CNN trainer consumes it: uint8 batches that the model rescales on the device;
  (4) the same stream with cache="memory", timed after one warm-up pass;
  (5) a roofline: TFRecordDataset -> parse -> decode in a parallel map -> batch -> prefetch.
(1) and (2) read a class-per-folder tree of JPEGs at the ORIGINAL sizes the sidecars record
(what a user downloads; regenerated from the 250x250 sample with a bicubic upsample and cached
in the workdir); (3)-(5) read the data engine's 256px shards of that very tree.
Writes bench_input.csv / .md / .json / .png into the workdir.

--profile also traces each loader (after its timings, at the first batch size) for
--profile_steps batches with a profiler step marker per batch, one profile run per loader in
WORKDIR/profile/<loader>/: `tensorboard --logdir=WORKDIR/profile` lists them side by side in
the Profile tab, and bench_input_profile.md holds what its pages say (ms per step, input share,
slowest tf.data stage).
"""
from __future__ import annotations

import argparse
import concurrent.futures
import json
import math
import os
import pathlib
import shutil
import sys
from typing import Any, Callable, Iterator, Sequence

from benchmarks import common as bench_common
from trainer.core import run_folder

CLASSES = ("benign", "malignant")
LOADERS = {  # name -> label in the table, in the numbering
    "keras_generator": "(1) ImageDataGenerator.flow_from_directory",
    "keras_dataset": "(2) image_dataset_from_directory + prefetch",
    "tfrecord_stream": "(3) TFRecord stream (input_pipeline)",
    "tfrecord_cached": "(4) TFRecord stream, cache=memory",
    "roofline": "(5) roofline: read + decode shards only",
}
REFERENCE, STREAM, ROOFLINE = "keras_generator", "tfrecord_stream", "roofline"
GOALS = (  # (name, numerator, denominator, at least)
    ("stream >= 20x ImageDataGenerator", STREAM, REFERENCE, 20.0),
    ("stream >= 3x image_dataset_from_directory", STREAM, "keras_dataset", 3.0),
    ("stream >= 80% of roofline", STREAM, ROOFLINE, 0.8),
)


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The docstring as written, and every flag's default."""


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench_input", description=__doc__,
                                formatter_class=HelpFormatter)
    p.add_argument("--input", default="../shared/data/isic-uda1",
                   help="legacy ISIC folder (ISIC_*.jpg + .json sidecars) or a class-per-folder "
                        "tree (benign/, malignant/) used as it is")
    p.add_argument("--workdir", required=True, help="where inputs are cached and results written")
    p.add_argument("--batch_sizes", default="32,64", help="comma list; each loader is timed at each")
    p.add_argument("--steps", type=int, default=100,
                   help="timed batches per loader (the study: 100)")
    p.add_argument("--warmup", type=int, default=5, help="untimed batches before each timing")
    p.add_argument("--repeats", type=int, default=1,
                   help="time the steps this many times per loader and report the median run "
                        "(steadier figures on a shared machine)")
    p.add_argument("--image_size", type=int, default=256, help="square side the loaders deliver")
    p.add_argument("--max_images", type=int, default=0,
                   help="use an evenly spaced subset; 0 = all")
    p.add_argument("--max_original_side", type=int, default=0,
                   help="cap the long side of the regenerated originals (quick tests); 0 = none")
    p.add_argument("--jpeg_quality", type=int, default=90,
                   help="quality of the regenerated originals")
    p.add_argument("--num_shards", type=int, default=0, help="data engine shards; 0 = its default")
    p.add_argument("--loaders", default=",".join(LOADERS), help=f"subset of {','.join(LOADERS)}")
    p.add_argument("--profile", action="store_true",
                   help="trace each loader into WORKDIR/profile/<loader>/ for TensorBoard's "
                        "Profile tab, a step marker per batch")
    p.add_argument("--profile_steps", type=int, default=20,
                   help="batches traced per loader with --profile")
    args = p.parse_args(argv)
    try:
        args.batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    except ValueError:
        p.error(f"--batch_sizes must be a comma list of integers, got {args.batch_sizes!r}")
    args.loaders = [name.strip() for name in args.loaders.split(",") if name.strip()]
    unknown = [n for n in args.loaders if n not in LOADERS]
    if unknown or REFERENCE not in args.loaders:
        p.error(f"--loaders needs {REFERENCE} (the ratios' reference) and names from "
                f"{list(LOADERS)}; unknown: {unknown}")
    if (args.steps <= 0 or args.repeats <= 0 or args.profile_steps <= 0 or args.warmup < 0 or args.image_size <= 0
            or args.max_images < 0
            or args.max_original_side < 0 or any(b <= 0 for b in args.batch_sizes)
            or not 1 <= args.jpeg_quality <= 100):
        p.error(f"impossible value among steps={args.steps} repeats={args.repeats} "
                f"warmup={args.warmup} "
                f"image_size={args.image_size} batch_sizes={args.batch_sizes} "
                f"max_images={args.max_images} max_original_side={args.max_original_side} "
                f"jpeg_quality={args.jpeg_quality}")
    return args


# ---------------------------------------------------------------- inputs (cached in workdir)

def original_size(width: int, height: int, max_side: int) -> tuple[int, int]:
    """The recorded original size, scaled down (aspect kept) so the long side <= max_side."""
    if width <= 0 or height <= 0:
        raise ValueError(f"original size must be positive, got {width}x{height}")
    if not max_side or max(width, height) <= max_side:
        return width, height
    scale = max_side / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def read_legacy_sample(data_dir: str, max_images: int = 0) -> list[dict[str, Any]]:
    """[{id, path, label, width, height}] of the benign/malignant images of a legacy folder,
    with the original size from meta.acquisition.pixelsX/pixelsY; an evenly spaced subset."""
    items = []
    for sidecar in sorted(pathlib.Path(data_dir).glob("*.json")):
        meta = json.loads(sidecar.read_text(encoding="utf-8")).get("meta", {})
        label = (meta.get("clinical") or {}).get("benign_malignant")
        acquisition = meta.get("acquisition") or {}
        image = sidecar.with_suffix(".jpg")
        if label not in CLASSES or not image.is_file():
            continue
        items.append({"id": sidecar.stem, "path": str(image), "label": label,
                      "width": int(acquisition["pixelsX"]), "height": int(acquisition["pixelsY"])})
    if not items:
        raise FileNotFoundError(f"{data_dir}: no ISIC_*.json sidecars with a benign/malignant "
                                "label next to a .jpg (expected the legacy ISIC layout)")
    if max_images and len(items) > max_images:
        stride = len(items) / max_images
        items = [items[int(i * stride)] for i in range(max_images)]
    return items


def _upsample_one(item: dict[str, Any], folder: pathlib.Path, max_side: int, quality: int) -> None:
    from PIL import Image

    size = original_size(item["width"], item["height"], max_side)
    with Image.open(item["path"]) as img:
        big = img.convert("RGB").resize(size, Image.BICUBIC)
    target = folder / item["label"] / f"{item['id']}.jpg"
    big.save(target, format="JPEG", quality=quality)


def build_original_tree(items: list[dict[str, Any]], folder: pathlib.Path, max_side: int,
                        quality: int) -> pathlib.Path:
    """benign/ and malignant/ JPEGs at the original sizes; reused when built with the same spec."""
    spec = {"quality": quality, "max_original_side": max_side,
            "images": {i["id"]: [i["label"], i["width"], i["height"]] for i in items}}
    stamp = folder / "build.json"
    if stamp.is_file() and json.loads(stamp.read_text()) == spec:
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    for name in CLASSES:
        (folder / name).mkdir(parents=True)
    with concurrent.futures.ThreadPoolExecutor(os.cpu_count() or 2) as pool:
        list(pool.map(lambda item: _upsample_one(item, folder, max_side, quality), items))
    stamp.write_text(json.dumps(spec))
    return folder


def class_tree_count(folder: pathlib.Path) -> int:
    return sum(1 for c in CLASSES for p in (folder / c).iterdir()
               if p.suffix.lower() in (".jpg", ".jpeg", ".png"))


def build_shards(tree: pathlib.Path, output: pathlib.Path, image_size: int, num_shards: int,
                 expected: int) -> pathlib.Path:
    """The data engine's shards of the tree, every image in split 'train'; reused when the
    tree and settings are unchanged."""
    stamp_path = output.with_name(output.name + ".build.json")
    tree_stamp = tree / "build.json"
    spec = {"tree": str(tree.resolve()), "image_size": image_size, "num_shards": num_shards,
            "tree_build": tree_stamp.read_text() if tree_stamp.is_file() else None,
            "records": expected}
    if (stamp_path.is_file() and json.loads(stamp_path.read_text()) == spec
            and (output / "manifest.json").is_file()):
        return output
    from beam_jobs import preprocess

    argv = [f"--input={tree}", f"--output={output}", f"--image_size={image_size}",
            "--split=100,0,0", "--overwrite", "--runner=DirectRunner",
            "--keep_degenerate"]  # every image of the tree, as the other loaders read them
    if num_shards:
        argv.append(f"--num_shards={num_shards}")
    manifest = preprocess.run(argv, save_main_session=False)
    records = manifest["datasets"][str(image_size)]["train"]["records"]
    if records != expected:
        raise RuntimeError(f"data engine wrote {records} train records for {expected} images of "
                           f"{tree}; see {output}/rejects.jsonl")
    stamp_path.write_text(json.dumps(spec))
    return output


# ---------------------------------------------------------------- the five loaders

def keras_generator(tree, shards, batch_size, image_size) -> Iterator:
    """(1) The study's loader; Keras 3 keeps it under keras.src.legacy (needs scipy)."""
    try:
        from keras.src.legacy.preprocessing.image import ImageDataGenerator
    except ImportError:  # older Keras 3 / tf.keras 2.x
        from keras.preprocessing.image import ImageDataGenerator
    generator = ImageDataGenerator(rescale=1.0 / 255).flow_from_directory(
        str(tree), target_size=(image_size, image_size), class_mode="binary",
        batch_size=batch_size, shuffle=True, seed=0)
    return iter(generator)  # loops over the data for ever, reshuffling each pass


def keras_dataset(tree, shards, batch_size, image_size) -> Iterator:
    import keras
    import tensorflow as tf

    ds = keras.utils.image_dataset_from_directory(
        str(tree), label_mode="binary", image_size=(image_size, image_size),
        batch_size=batch_size, shuffle=True, seed=0, verbose=False)
    ds = ds.map(lambda x, y: (x / 255.0, y), num_parallel_calls=tf.data.AUTOTUNE)
    return iter(ds.repeat().prefetch(tf.data.AUTOTUNE))


def tfrecord_stream(tree, shards, batch_size, image_size, cache: str = "") -> Iterator:
    from trainer.core import input_pipeline

    return iter(input_pipeline.make_dataset(
        str(shards), "train", image_size=image_size, batch_size=batch_size, training=True,
        augment=False, cache=cache, repeat=True, seed=0, as_uint8=True))


def tfrecord_cached(tree, shards, batch_size, image_size) -> Iterator:
    return tfrecord_stream(tree, shards, batch_size, image_size, cache="memory")


def roofline(tree, shards, batch_size, image_size) -> Iterator:
    """Read + parse + decode to uint8 and batch: what any stream of these shards must do."""
    import tensorflow as tf

    from isicflow import dataset as dataset_lib
    from trainer.core import input_pipeline

    manifest = dataset_lib.read_manifest(str(shards))
    paths = dataset_lib.shard_paths(manifest, str(shards), image_size, "train")
    ds = tf.data.TFRecordDataset(paths, dataset_lib.compression_type(manifest),
                                 num_parallel_reads=min(len(paths), 16))
    # The stream's own parse + decode, and nothing after it.
    ds = ds.repeat().map(lambda s: input_pipeline.parse_and_decode(s, image_size),
                         num_parallel_calls=tf.data.AUTOTUNE, deterministic=False)
    return iter(ds.batch(batch_size).prefetch(tf.data.AUTOTUNE))


LOADER_FUNCTIONS: dict[str, Callable[..., Iterator]] = {
    "keras_generator": keras_generator, "keras_dataset": keras_dataset,
    "tfrecord_stream": tfrecord_stream, "tfrecord_cached": tfrecord_cached, "roofline": roofline,
}


# ---------------------------------------------------------------- table

def result_rows(rates: dict[tuple[str, int], bench_common.Timing]) -> list[dict[str, Any]]:
    """Table rows in loader order per batch size, with the ratio to (1) and the roofline share."""
    rows = []
    for batch_size in sorted({b for _, b in rates}):
        reference = rates.get((REFERENCE, batch_size))
        top = rates.get((ROOFLINE, batch_size))
        for name in LOADERS:
            t = rates.get((name, batch_size))
            if t is None:
                continue
            rows.append({
                "loader": name, "description": LOADERS[name], "batch_size": batch_size,
                "batches": t.batches, "images": t.images, "seconds": t.seconds,
                "images_per_s": t.images_per_s, "cpu_ms_per_image": t.cpu_ms_per_image,
                "ratio_to_keras_generator": bench_common.ratio(
                    t.images_per_s, reference.images_per_s if reference else None),
                "share_of_roofline": bench_common.ratio(
                    t.images_per_s, top.images_per_s if top else None)})
    return rows


def goal_lines(rows: list[dict[str, Any]]) -> list[str]:
    rate = {(r["loader"], r["batch_size"]): r["images_per_s"] for r in rows}
    lines = []
    for batch_size in sorted({r["batch_size"] for r in rows}):
        for text, num, den, at_least in GOALS:
            if (num, batch_size) in rate and (den, batch_size) in rate:
                value = bench_common.ratio(rate[(num, batch_size)], rate[(den, batch_size)])
                verdict = "met" if value >= at_least else "NOT met"
                lines.append(f"batch {batch_size}: {text}: {value:.3g} -> {verdict}")
    return lines


def write_report(workdir: pathlib.Path, rows, goals, context: dict[str, Any]) -> dict[str, str]:
    paths = {ext: str(workdir / f"bench_input.{ext}") for ext in ("csv", "md", "json", "png")}
    bench_common.write_csv(paths["csv"], rows)
    columns = ["description", "batch_size", "images", "seconds", "images_per_s",
               "ratio_to_keras_generator", "share_of_roofline", "cpu_ms_per_image"]
    text = (f"# Input benchmark\n\n{context['summary']}\n\n"
            + bench_common.markdown_table(rows, columns)
            + "\n\nGoals (reported, not asserted):\n\n" + "\n".join(f"- {g}" for g in goals) + "\n")
    pathlib.Path(paths["md"]).write_text(text)
    run_folder.write_json(paths["json"], {"rows": rows, "goals": goals, **context})  # NaN -> null
    batch_sizes = sorted({r["batch_size"] for r in rows})
    series = {LOADERS[n]: [next(r["images_per_s"] for r in rows
                                if r["loader"] == n and r["batch_size"] == b)
                           for b in batch_sizes]
              for n in LOADERS if any(r["loader"] == n for r in rows)}
    bench_common.grouped_bar_chart(paths["png"], [f"batch {b}" for b in batch_sizes], series,
                                   "images/s (log scale)", context["title"])
    return paths


def profile_loader(name: str, iterator: Iterator, workdir: pathlib.Path, steps: int,
                   warmup: int) -> dict[str, Any]:
    """One profile run for one loader in WORKDIR/profile/<name>/ (replacing an older one),
    read back as TensorBoard's Profile tab reads it."""
    from trainer.core import profiling

    logdir = workdir / "profile" / name
    shutil.rmtree(logdir, ignore_errors=True)
    timing = bench_common.profile_batches(iterator, steps, str(logdir), warmup=warmup)
    [session] = profiling.sessions(str(logdir))
    summary = profiling.step_summary(session)
    return {"loader": name, "description": LOADERS[name], "logdir": str(logdir),
            "steps": summary["steps"], "step_time_ms": summary["step_time_ms"],
            "input_share": summary["input_share"],
            "slowest_tf_data_stage": profiling.slowest_stage(session) or "(no tf.data stages)",
            "images_per_s_traced": timing.images_per_s,
            "input_conclusion": summary["input_conclusion"]}


def write_profile_report(workdir: pathlib.Path, rows: list[dict[str, Any]]) -> str:
    path = workdir / "bench_input_profile.md"
    path.write_text(
        "# Input benchmark under the profiler\n\n"
        f"`tensorboard --logdir={workdir / 'profile'}` then the Profile tab: one run per "
        "loader. Figures as its Input Pipeline Analyzer reports them (a step = one batch "
        "fetched; the profiler slows every loader a little).\n\n"
        + bench_common.markdown_table(rows, ["description", "steps", "step_time_ms",
                                             "input_share", "images_per_s_traced",
                                             "slowest_tf_data_stage"])
        + "\n")
    return str(path)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Builds (or reuses) the inputs, times every loader, writes the report; returns it."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    args = parse_args(argv)
    workdir = pathlib.Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    data = pathlib.Path(args.input)
    if not data.is_dir():
        sys.exit(f"bench_input: --input={data}: no such folder; pass a legacy ISIC folder or a "
                 "benign/ malignant/ tree")
    if all((data / c).is_dir() for c in CLASSES):
        tree = data  # a user's class-per-folder tree, used as it is
    else:
        items = read_legacy_sample(str(data), args.max_images)
        print(f"originals: {len(items)} images -> {workdir / 'originals'}", flush=True)
        tree = build_original_tree(items, workdir / "originals", args.max_original_side,
                                   args.jpeg_quality)
    n_images = class_tree_count(tree)
    shards = build_shards(tree, workdir / "shards", args.image_size, args.num_shards, n_images)
    load_before = os.getloadavg()
    timings: dict[tuple[str, int], bench_common.Timing] = {}
    profiles: list[dict[str, Any]] = []
    for batch_size in args.batch_sizes:
        passes = args.steps * batch_size / n_images
        for name in args.loaders:
            iterator = LOADER_FUNCTIONS[name](tree, shards, batch_size, args.image_size)
            warmup = args.warmup + (math.ceil(n_images / batch_size) if name == "tfrecord_cached"
                                    else 0)
            runs = [bench_common.time_batches(iterator, args.steps, warmup if r == 0 else 0)
                    for r in range(args.repeats)]
            timing = bench_common.median_timing(runs)
            if args.profile and batch_size == args.batch_sizes[0]:
                profiles.append(profile_loader(name, iterator, workdir, args.profile_steps,
                                               args.warmup))
            del iterator
            timings[(name, batch_size)] = timing
            print(f"batch {batch_size:>3} {LOADERS[name]:<48} {timing.images_per_s:10.1f} images/s "
                  f"({timing.images} images in {timing.seconds:.2f} s, "
                  f"{timing.cpu_ms_per_image:.2f} CPU ms/image, {passes:.1f} passes, "
                  f"median of {args.repeats})",
                  flush=True)
            if args.profile and batch_size == args.batch_sizes[0]:
                print(f"          profile: {profiles[-1]['steps']} steps of "
                      f"{profiles[-1]['step_time_ms']:.1f} ms, input "
                      f"{profiles[-1]['input_share']:.1%}, slowest tf.data stage "
                      f"{profiles[-1]['slowest_tf_data_stage']} -> {workdir / 'profile' / name}",
                      flush=True)
    load_after = os.getloadavg()
    rows = result_rows(timings)
    goals = goal_lines(rows)
    summary = (f"{n_images} images ({tree}), {args.steps} timed batches after {args.warmup} "
               f"warm-up batches (median of {args.repeats} timings), {args.image_size}px; "
               f"{os.cpu_count()} CPUs, load average "
               f"{load_before[0]:.2f} before and {load_after[0]:.2f} after (other work on the "
               "machine lowers every rate; cpu_ms_per_image, this process's CPU time per image, "
               "is the figure such load disturbs least).")
    context = {"summary": summary, "title": f"Input pipelines, {n_images} ISIC images at "
               f"{args.image_size}px ({os.cpu_count()} CPUs)", "args": vars(args),
               "load_average_before": load_before, "load_average_after": load_after,
               "cpus": os.cpu_count(), "images": n_images}
    if profiles:
        context["profile"] = profiles
    paths = write_report(workdir, rows, goals, context)
    if profiles:
        paths["profile_md"] = write_profile_report(workdir, profiles)
    print("\n" + pathlib.Path(paths["md"]).read_text(), flush=True)
    return {"rows": rows, "goals": goals, "paths": paths, **context}


if __name__ == "__main__":
    main(sys.argv[1:])
    sys.exit(0)
