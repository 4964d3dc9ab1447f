"""Benchmark of the data engine against a hand-written Pillow loop (`make bench-preprocess`).

Sources: any dataset the engine reads (`--input=DIR`, any layout), as it is, or `--repeat=N`
copies of it side by side as N downloads under one root (ids renamed, `ISIC_0000000` ->
`ISIC_0000000_r3`; each copy's JPEGs get a COM marker segment, so the bytes differ and the
engine's duplicate check keeps them while the pixels and the decode cost stay the same).
`--upsample` instead rebuilds a legacy-JSON sample at the sizes its sidecars record (the
250x250 isic-uda1 copy upsampled bicubically: smooth, cheap-to-decode files).

Variants, each timed end to end as a user runs it (a fresh process, from exec to exit: interpreter,
imports, layout read, pipeline, shards, manifest): (a) a hand-written Pillow loop (full decode,
bilinear resize to 256, JPEG q95, one process); `python -m beam_jobs.preprocess` with
(b) one worker, (c) two worker threads, (c') two worker processes. The parent samples the
resident memory of each variant's process tree (Beam's worker processes included) and takes its
CPU time from wait4. Runs are interleaved, the median by images/s is reported. The engine prints
its timeline (`--profile_phases`): the fixed costs before the first and after the last decode.
(d) compares the engine's reduced-scale JPEG decode with a full decode on the real files, per
source size: PSNR after the same resize, and the per-image decode cost (the floor of the engine).

    python -m benchmarks.bench_preprocess --input=../shared/data/isic-fullres-30 --repeat=50
"""
from __future__ import annotations

import argparse
import io
import json
import os
import re
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time

import numpy as np
import psutil
from PIL import Image

from benchmarks.common import markdown_table, ratio

SIZE = 256
PSNR_SIZES = (256, 128)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
TEXT_EXTENSIONS = (".csv", ".json")  # metadata whose ids are renamed in repeated copies
BUILD_VERSION = "2"  # bump when the copies' format changes, so old builds are redone

# The engine's speed targets, on the real full-resolution set at ~1,500 images, ratios of one run.
GOALS = {"beam2_over_a": (">=", 8.0), "beam2_over_b": (">=", 1.8),
         "before_first_decode_s": ("<=", 2.0), "after_last_decode_s": ("<=", 1.0),
         "beam2_peak_over_a": ("<=", 1.5), "psnr_db_min": (">=", 40.0)}


# ---- sources ----

def image_files(root: str) -> list[str]:
    """Image files under root (recursive, links followed), hidden files and masks skipped, sorted."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in filenames:
            stem, ext = os.path.splitext(name)
            if ext.lower() in IMAGE_EXTENSIONS and not name.startswith(".") and \
                    not stem.endswith(("_segmentation", "_mask", "_superpixels")):
                found.append(os.path.join(dirpath, name))
    return sorted(found)


def with_jpeg_comment(data: bytes, text: bytes) -> bytes:
    """The JPEG with a COM segment after its leading APPn segments (JFIF/EXIF stay first).

    Decoders skip COM segments: the pixels and the decode work are those of the original.
    """
    if data[:2] != b"\xff\xd8" or len(text) > 65533:
        raise ValueError("not a JPEG, or comment too long")
    pos = 2
    while pos + 4 <= len(data) and data[pos] == 0xFF and 0xE0 <= data[pos + 1] <= 0xEF:
        pos += 2 + struct.unpack(">H", data[pos + 2:pos + 4])[0]
    return data[:pos] + b"\xff\xfe" + struct.pack(">H", len(text) + 2) + text + data[pos:]


def distinct_copy(data: bytes, copy: int) -> bytes:
    """Bytes of copy number `copy` (>= 1): same pixels, other bytes (and so another sha256)."""
    tag = f"isicflow bench copy {copy}".encode()
    if data[:3] == b"\xff\xd8\xff":
        return with_jpeg_comment(data, tag)
    return data + tag  # PNG: bytes after IEND, which decoders ignore


def id_pattern(ids) -> re.Pattern:
    """Matches any of the ids as a whole token (not inside a longer id or number)."""
    alternatives = "|".join(re.escape(i) for i in sorted(set(ids), key=len, reverse=True))
    return re.compile(rf"(?<![0-9A-Za-z])({alternatives})(?![0-9A-Za-z])")


def renamed(text: str, pattern: re.Pattern, copy: int) -> str:
    """Every id in text gets the suffix _r<copy> (before any _downsampled/_gray suffix)."""
    return pattern.sub(lambda m: f"{m.group(1)}_r{copy}", text)


def image_ids(root: str) -> list[str]:
    """The ids of root's images as the engine names them (file stems, variant suffixes cut)."""
    from beam_jobs.layouts.common import image_stem, strip_suffixes

    return sorted({strip_suffixes(image_stem(p))[0] for p in image_files(root)})


def repeat_dataset(source: str, target: str, repeat: int) -> str:
    """`repeat` copies of the download `source` as downloads target/r000, r001, ... (built once).

    Copy 0 is the source as it is; copy k >= 1 renames every id (file names and CSV/JSON text)
    to <id>_r<k> and gives each image other bytes with the same pixels (distinct_copy). Checked
    once built: the engine's layout reader must find `repeat` times the source's records and no
    new rejection, else ValueError (e.g. class folders, which several downloads cannot hold).
    """
    source = os.path.abspath(source)
    stamp = json.dumps({"source": source, "repeat": repeat, "version": BUILD_VERSION})
    marker = os.path.join(target, "COMPLETE")
    if os.path.exists(marker) and open(marker).read() == stamp:
        return target
    if os.path.exists(target):
        shutil.rmtree(target)
    pattern = id_pattern(image_ids(source))
    for k in range(repeat):
        copy_root = os.path.join(target, f"r{k:03d}")
        for dirpath, dirnames, filenames in os.walk(source, followlinks=True):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            out_dir = os.path.join(copy_root, os.path.relpath(dirpath, source))
            os.makedirs(out_dir, exist_ok=True)
            for name in filenames:
                src = os.path.join(dirpath, name)
                ext = os.path.splitext(name)[1].lower()
                dst = os.path.join(out_dir, renamed(name, pattern, k) if k else name)
                if ext in IMAGE_EXTENSIONS and k:
                    with open(src, "rb") as f, open(dst, "wb") as g:
                        g.write(distinct_copy(f.read(), k))
                elif ext in TEXT_EXTENSIONS and k:
                    with open(src, encoding="utf-8", newline="") as f:
                        text = f.read()
                    with open(dst, "w", encoding="utf-8", newline="") as g:
                        g.write(renamed(text, pattern, k))
                else:
                    shutil.copyfile(src, dst)
    check_repeated(source, target, repeat)
    with open(marker, "w") as f:
        f.write(stamp)
    return target


def check_repeated(source: str, target: str, repeat: int) -> None:
    """The repeated root reads as `repeat` times the source: records per label, rejections."""
    import collections

    from beam_jobs import layouts

    one, many = layouts.read_layout(source), layouts.read_layout(target)

    def shape(result, times=1):
        labels = collections.Counter(r.label for r in result.records)
        return ({k: times * v for k, v in labels.items()}, times * len(result.rejections))

    if shape(many) != shape(one, repeat) or many.layout not in (one.layout, layouts.DOWNLOADS):
        raise ValueError(
            f"{repeat} copies of {source} ({one.layout}: labels {shape(one)[0]}, "
            f"{len(one.rejections)} rejections) read as {many.layout} with labels "
            f"{shape(many)[0]}, {len(many.rejections)} rejections; this layout cannot be "
            "repeated as several downloads: use --repeat=1")


def upsampled_sample(sample_dir: str, target: str, limit: int = 0) -> str:
    """The legacy-JSON sample with every JPEG upsampled (bicubic) to its sidecar's recorded size."""
    marker = os.path.join(target, "COMPLETE")
    sidecars = sorted(f for f in os.listdir(sample_dir) if f.endswith(".json"))[: limit or None]
    stamp = json.dumps({"source": os.path.abspath(sample_dir), "limit": limit})
    if os.path.exists(marker) and open(marker).read() == stamp:
        return target
    if os.path.exists(target):
        shutil.rmtree(target)
    os.makedirs(target)
    for name in sidecars:
        with open(os.path.join(sample_dir, name)) as f:
            acq = json.load(f)["meta"]["acquisition"]
        img = Image.open(os.path.join(sample_dir, name[:-5] + ".jpg")).convert("RGB")
        img.resize((acq["pixelsX"], acq["pixelsY"]), Image.BICUBIC).save(
            os.path.join(target, name[:-5] + ".jpg"), quality=90)
        shutil.copyfile(os.path.join(sample_dir, name), os.path.join(target, name))
    with open(marker, "w") as f:
        f.write(stamp)
    return target


# ---- variants ----

def pillow_loop(source: str, out_dir: str) -> int:
    """(a): what a user writes by hand: full decode, antialiased bilinear resize, JPEG encode."""
    os.makedirs(out_dir, exist_ok=True)
    n = 0
    for path in image_files(source):
        img = Image.open(path).convert("RGB")
        small = img.resize((SIZE, SIZE), Image.BILINEAR)
        buf = io.BytesIO()
        small.save(buf, format="JPEG", quality=95)
        with open(os.path.join(out_dir, f"{n:06d}.jpg"), "wb") as f:
            f.write(buf.getvalue())
        n += 1
    return n


# The engine's variants: Beam pipeline options of each (the DirectRunner's FnApiRunner).
BEAM_VARIANTS = {
    "beam1": ["--direct_num_workers=1"],  # (b): one worker, in the launching process
    "beam2": ["--direct_num_workers=2", "--direct_running_mode=multi_threading"],  # (c)
    "beam2p": ["--direct_num_workers=2", "--direct_running_mode=multi_processing"],  # (c')
}
NAMES = {"pillow": "(a) Pillow loop, 1 process", "beam1": "(b) engine, 1 worker",
         "beam2": "(c) engine, 2 worker threads", "beam2p": "(c') engine, 2 worker processes"}


def variant_command(variant: str, source: str, out_dir: str) -> list[str]:
    if variant == "pillow":
        return [sys.executable, "-m", "benchmarks.bench_preprocess", "--variant=pillow",
                f"--source={source}", f"--variant_out={out_dir}"]
    return [sys.executable, "-m", "beam_jobs.preprocess", f"--input={source}",
            f"--output={out_dir}", "--overwrite", f"--image_size={SIZE}", "--profile_phases",
            *BEAM_VARIANTS[variant]]


def tree_rss_bytes(pid: int) -> int:
    """Resident memory of a process and all its descendants (psutil); processes that exit
    while being read count 0."""
    try:
        root = psutil.Process(pid)
        tree = [root] + root.children(recursive=True)
    except psutil.Error:
        return 0
    total = 0
    for process in tree:
        try:
            total += process.memory_info().rss
        except psutil.Error:
            pass
    return total


WORKER_RATE = re.compile(
    r"ProcessImage\[(pid \d+ instance \w+)\]: (\d+) images in this worker, ([\d.]+) images/s")


def stage_rate(log: str) -> float | None:
    """Sum over DoFn instances of each one's last logged DecodeResizeEncode rate, which counts
    from the instance's setup, so worker start-up is excluded."""
    last: dict[str, tuple[int, float]] = {}
    for worker, seen, rate in WORKER_RATE.findall(log):
        if int(seen) >= last.get(worker, (0, 0.0))[0]:
            last[worker] = (int(seen), float(rate))
    return sum(rate for _, rate in last.values()) if last else None


def measure(variant: str, source: str, out_dir: str) -> dict:
    """Runs one variant in a fresh process: wall time from exec to exit, CPU time, peak memory
    of its process tree, and (engine) its timeline with the process exit added."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        start = time.time()
        proc = subprocess.Popen(variant_command(variant, source, out_dir), stdout=out,
                                stderr=err, text=True, env=env)
        peak = 0
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            peak = max(peak, tree_rss_bytes(proc.pid))
            time.sleep(0.05)
        end = time.time()
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if proc.returncode != 0:
        raise RuntimeError(f"variant {variant} failed with exit code {proc.returncode}: "
                           f"{stderr[-3000:]}")
    seconds = end - start
    cpu = usage.ru_utime + usage.ru_stime
    result = {"variant": variant, "seconds": seconds, "cpu_s": cpu, "cores_busy": cpu / seconds,
              "peak_rss_mb": max(peak, usage.ru_maxrss * 1024) / 2**20}
    if variant == "pillow":
        result["images"] = json.loads(stdout.strip().splitlines()[-1])["images"]
    else:
        from beam_jobs import timeline

        with open(os.path.join(out_dir, "manifest.json")) as f:
            result["images"] = json.load(f)["totals"]["written"]
        phases = timeline.parse_printed(stdout)
        if phases and phases.get("process_start_epoch"):
            origin = phases["process_start_epoch"]
            phases["marks_s"]["process_exit"] = round(end - origin, 4)
            last = phases["marks_s"].get("last_image_decoded")
            phases["summary"]["after_last_decode_s"] = None if last is None else end - origin - last
            phases["summary"]["after_last_decode_until"] = "process_exit"
        result["timeline"] = phases
        result["stage_images_per_s"] = stage_rate(stderr)
    result["images_per_s"] = result["images"] / seconds
    return result


def median_run(measured: list[dict]) -> dict:
    """The run with the median images/s (the lower middle one for an even count), with every
    run's rate and the highest peak memory of all runs beside it."""
    ordered = sorted(measured, key=lambda r: r["images_per_s"])
    chosen = dict(ordered[(len(ordered) - 1) // 2])
    chosen["runs_images_per_s"] = [r["images_per_s"] for r in measured]
    chosen["peak_rss_mb"] = max(r["peak_rss_mb"] for r in measured)
    return chosen


# ---- (d) the reduced-scale decode on the real files ----

def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


def _best_of(fn, repeats: int = 3) -> float:
    """Fastest of a few single-threaded runs, in ms (the least disturbed by other load)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * min(times)


def decode_scale_check(source: str, per_size: int = 3) -> list[dict]:
    """Per source size (up to `per_size` real files each): the DCT scale the engine picks, PSNR of
    reduced decode + resize against full decode + the same resize (to 256 and 128 from one
    decode for 256, as --image_size=256,128 does; to 128 decoded for 128 alone), and the decode
    costs in ms (one thread): full, reduced, and reduced + resize + encode (the engine's
    per-image work, its floor)."""
    from isicflow import imaging

    by_size: dict[tuple[int, int], list[str]] = {}
    for path in image_files(source):
        with Image.open(path) as img:
            if img.format == "JPEG":
                by_size.setdefault(img.size, []).append(path)
    rows = []
    for (width, height), paths in sorted(by_size.items(), key=lambda kv: -kv[0][0] * kv[0][1]):
        scores = {s: [] for s in ("256", "128_of_256", "128_alone")}
        costs = {"full": [], "reduced": [], "engine": []}
        denominators = set()
        for path in paths[:per_size]:
            with open(path, "rb") as f:
                data = f.read()
            full = imaging.decode_image(data).image
            reduced = imaging.decode_image(data, target=max(PSNR_SIZES))
            alone = imaging.decode_image(data, target=min(PSNR_SIZES))
            denominators.add(reduced.scale_denominator)
            for key, image, size in (("256", reduced.image, 256), ("128_of_256", reduced.image, 128),
                                     ("128_alone", alone.image, 128)):
                scores[key].append(psnr(np.asarray(imaging.resize_pil(full, size)),
                                        np.asarray(imaging.resize_pil(image, size))))
            costs["full"].append(_best_of(lambda: imaging.decode_image(data)))
            costs["reduced"].append(_best_of(lambda: imaging.decode_image(data, target=SIZE)))
            costs["engine"].append(_best_of(lambda: imaging.encode_image(imaging.resize_pil(
                imaging.decode_image(data, target=SIZE).image, SIZE), "jpeg", 95)))
        rows.append({"source": f"{width}x{height}", "files": min(len(paths), per_size),
                     "at_least_8x": min(width, height) >= 8 * max(PSNR_SIZES),
                     "scale": "/".join(f"1/{d}" for d in sorted(denominators)),
                     **{f"psnr_{k}_db_min": min(v) for k, v in scores.items()},
                     **{f"{k}_ms": statistics.median(v) for k, v in costs.items()}})
    return rows


# ---- summary ----

def goal_check(value, goal) -> str:
    op, target = goal
    if value is None or not np.isfinite(value):
        return "not measured"
    met = value >= target if op == ">=" else value <= target
    if met:
        return "met"
    # How far off, in the goal's own terms.
    return f"MISSED by {abs(value - target):.2f} ({100 * abs(value - target) / target:.0f}%)"


def summarize(results: dict, label: str) -> tuple[dict, list[str]]:
    """The ratios the goals are stated in, and the printed report, from one run's results."""
    rows = []
    for key, name in NAMES.items():
        if key not in results:
            continue
        r = results[key]
        rows.append({"variant (median run)": name, "images": r["images"],
                     "wall s": r["seconds"], "images/s": r["images_per_s"],
                     "cores busy": r["cores_busy"], "peak MB": r["peak_rss_mb"],
                     "decode stage images/s": r.get("stage_images_per_s") or float("nan")})
    rate = {k: results[k]["images_per_s"] for k in NAMES if k in results}
    summary = {"beam2_over_a": ratio(rate["beam2"], rate["pillow"]),
               "beam2_over_b": ratio(rate["beam2"], rate["beam1"]),
               "beam2p_over_a": ratio(rate.get("beam2p", float("nan")), rate["pillow"]),
               "beam2p_over_b": ratio(rate.get("beam2p", float("nan")), rate["beam1"]),
               "beam2_peak_over_a": ratio(results["beam2"]["peak_rss_mb"],
                                          results["pillow"]["peak_rss_mb"]),
               "beam2p_peak_over_a": ratio(results.get("beam2p", {}).get("peak_rss_mb", float("nan")),
                                           results["pillow"]["peak_rss_mb"])}
    phases = (results["beam2"].get("timeline") or {}).get("summary", {})
    summary["before_first_decode_s"] = phases.get("before_first_decode_s")
    summary["after_last_decode_s"] = phases.get("after_last_decode_s")
    summary["image_cpu_ms"] = phases.get("image_cpu_ms")
    n, loop_s = results["pillow"]["images"], results["pillow"]["seconds"]
    # With no fixed cost at all, two workers could at best run 2 images per CPU time of one.
    if summary["image_cpu_ms"]:
        summary["beam2_over_a_bound"] = loop_s / (n * summary["image_cpu_ms"] / 1000 / 2)
    decode = results.get("decode") or []
    big = [r for r in decode if r["at_least_8x"]]
    if big:
        summary["psnr_db_min"] = min(min(r["psnr_256_db_min"], r["psnr_128_of_256_db_min"],
                                         r["psnr_128_alone_db_min"]) for r in big)
    lines = [f"## {label}", "", markdown_table(rows), "",
             "Targets (stated for real full-resolution sources at ~1,500 images):"]
    for key, goal in GOALS.items():
        if key in summary:
            value = summary[key]
            shown = "n/a" if value is None else f"{value:.2f}"
            lines.append(f"- {key} = {shown} (goal {goal[0]} {goal[1]}): {goal_check(value, goal)}")
    lines.append(f"- (c') two worker processes: {summary['beam2p_over_a']:.2f}x (a), "
                 f"{summary['beam2p_over_b']:.2f}x (b), peak {summary['beam2p_peak_over_a']:.2f}x (a)")
    if "beam2_over_a_bound" in summary:
        lines.append(f"- engine CPU per image {summary['image_cpu_ms']:.1f} ms (decode at the "
                     f"chosen DCT scale + resize + encode): with no fixed cost two workers "
                     f"would reach at most {summary['beam2_over_a_bound']:.1f}x (a)")
    timeline_data = results["beam2"].get("timeline")
    if timeline_data:
        lines += ["", "Timeline of the median (c) run (s from process start):", "",
                  markdown_table([{"phase": k, "t (s)": v}
                                  for k, v in timeline_data["marks_s"].items()])]
    if decode:
        lines += ["", "(d) reduced-scale decode vs full decode, real files, per source size "
                  "(PSNR after the same resize; ms on one thread):", "",
                  markdown_table(decode)]
    return summary, lines


def run_variant(variant: str, source: str, out_dir: str) -> None:
    """Child side of (a): the loop, then its image count as one JSON line."""
    print(json.dumps({"variant": variant, "images": pillow_loop(source, out_dir)}))


def load_average() -> str:
    try:
        return " ".join(f"{load:.2f}" for load in os.getloadavg())
    except OSError:
        return "n/a"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench_preprocess",
                                description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--input", "--data", dest="input", default="../shared/data/isic-fullres-30",
                   help="any raw download the engine reads (folder of one or several "
                        "downloads); --data is its former name")
    p.add_argument("--workdir", default="out/bench-preprocess")
    p.add_argument("--repeat", type=int, default=1,
                   help="copies of --input, side by side as downloads (ids renamed, bytes differ)")
    p.add_argument("--upsample", action="store_true",
                   help="--input is a legacy-JSON sample: upsample it to its sidecars' sizes first")
    p.add_argument("--limit", type=int, default=0, help="with --upsample: only the first N images")
    p.add_argument("--runs", type=int, default=3,
                   help="runs of every variant, interleaved; the median by images/s is reported")
    p.add_argument("--variants", default=",".join(NAMES),
                   help="comma list of variants (pillow, beam1 and beam2 are needed for ratios)")
    p.add_argument("--label", default="", help="title of this run's report")
    p.add_argument("--variant", help=argparse.SUPPRESS)
    p.add_argument("--source", help=argparse.SUPPRESS)
    p.add_argument("--variant_out", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.variant:
        run_variant(args.variant, args.source, args.variant_out)
        return 0

    name = os.path.basename(os.path.abspath(args.input))
    base = args.input
    if args.upsample:
        base = upsampled_sample(args.input, os.path.join(args.workdir, "sources", name + "-upsampled"),
                                args.limit)
        name += "-upsampled"
    source = base
    if args.repeat > 1:
        print(f"building {args.repeat} copies of {base} (once) ...", flush=True)
        source = repeat_dataset(base, os.path.join(args.workdir, "sources", f"{name}-x{args.repeat}"),
                                args.repeat)
    label = args.label or f"{name} x{args.repeat} ({len(image_files(source))} images)"
    variants = [v for v in args.variants.split(",") if v]
    runs: dict[str, list[dict]] = {}
    loads = [load_average()]
    for run in range(args.runs):  # interleaved, so a slow spell of the machine hits every variant
        for variant in variants:
            print(f"run {run + 1}/{args.runs}: {variant} ...", flush=True)
            runs.setdefault(variant, []).append(
                measure(variant, source, os.path.join(args.workdir, "runs", variant)))
            loads.append(load_average())
    results = {key: median_run(measured) for key, measured in runs.items()}
    results["decode"] = decode_scale_check(base)
    results["load_average"] = loads
    summary, lines = summarize(results, label)
    lines.append("")
    lines.append(f"load average (1, 5, 15 min) before and after each run: {loads[0]} ... "
                 f"{loads[-1]}; highest 1-min {max(float(l.split()[0]) for l in loads):.2f}")
    report = "\n".join(lines)
    print(report)
    results["summary"] = summary
    os.makedirs(args.workdir, exist_ok=True)
    stem = os.path.join(args.workdir, f"bench_preprocess_{name}_x{args.repeat}")
    with open(stem + ".json", "w") as f:
        json.dump(results, f, indent=1, default=str)
    with open(stem + ".md", "w") as f:
        f.write(report + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
