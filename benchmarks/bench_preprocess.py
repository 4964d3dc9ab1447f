"""Benchmark of the data engine against a hand-written Pillow loop (`make bench-preprocess`).

Sources: the real sample upsampled to the original sizes its sidecars record (718x542 up to
3872x2592), built once into WORKDIR/originals, and the same repeated --repeat times. Variants:
(a) a hand-written Pillow loop; the engine with (b) one worker, (c) two worker threads and
(c') two worker processes (DirectRunner's multi_threading / multi_processing modes); (d) the
reduced-scale JPEG decode against a full decode. Each variant runs in its own process; the
parent samples the resident memory of that process and all its children, so the peak counts
Beam's worker processes too. Prints a table of ratios measured in this one run.

    python -m benchmarks.bench_preprocess --data=../shared/data/isic-uda1 --workdir=out/bench-preprocess
"""
from __future__ import annotations

import argparse
import io
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Callable

import numpy as np
from PIL import Image

SIZE = 256


def build_originals(sample_dir: str, target_dir: str, repeat: int = 1, limit: int = 0) -> str:
    """Legacy layout of JPEGs at their original sizes; copies 2.. differ by trailing bytes.

    Bytes after a JPEG's end-of-image marker are ignored by decoders but change the content
    hash, so repeated copies are not collapsed by the job's duplicate check.
    """
    base = os.path.join(target_dir, "x1")
    marker = os.path.join(base, "COMPLETE")
    sidecars = sorted(f for f in os.listdir(sample_dir) if f.endswith(".json"))[: limit or None]
    if not os.path.exists(marker):
        os.makedirs(base, exist_ok=True)
        for name in sidecars:
            meta = json.load(open(os.path.join(sample_dir, name)))
            acq = meta["meta"]["acquisition"]
            img = Image.open(os.path.join(sample_dir, name[:-5] + ".jpg")).convert("RGB")
            img.resize((acq["pixelsX"], acq["pixelsY"]), Image.BICUBIC).save(
                os.path.join(base, name[:-5] + ".jpg"), quality=90)
            shutil.copyfile(os.path.join(sample_dir, name), os.path.join(base, name))
        open(marker, "w").close()
    if repeat == 1:
        return base
    out = os.path.join(target_dir, f"x{repeat}")
    if not os.path.exists(os.path.join(out, "COMPLETE")):
        os.makedirs(out, exist_ok=True)
        for name in sidecars:
            data = open(os.path.join(base, name[:-5] + ".jpg"), "rb").read()
            meta = json.load(open(os.path.join(base, name)))
            for k in range(repeat):
                stem = name[:-5] if k == 0 else f"{name[:-5]}_copy{k}"
                with open(os.path.join(out, stem + ".jpg"), "wb") as f:
                    f.write(data + (f"copy{k}".encode() if k else b""))
                with open(os.path.join(out, stem + ".json"), "w") as f:
                    json.dump(dict(meta, name=stem), f)
        open(os.path.join(out, "COMPLETE"), "w").close()
    return out


def pillow_loop(source: str, out_dir: str) -> int:
    """(a): what a user writes by hand: full decode, antialiased bilinear resize, JPEG encode."""
    os.makedirs(out_dir, exist_ok=True)
    n = 0
    for name in sorted(os.listdir(source)):
        if not name.endswith(".jpg"):
            continue
        img = Image.open(os.path.join(source, name)).convert("RGB")
        small = img.resize((SIZE, SIZE), Image.BILINEAR)
        buf = io.BytesIO()
        small.save(buf, format="JPEG", quality=95)
        with open(os.path.join(out_dir, name), "wb") as f:
            f.write(buf.getvalue())
        n += 1
    return n


# The Beam variants: Beam pipeline options of each (the DirectRunner's FnApiRunner).
BEAM_VARIANTS = {
    "beam1": ["--direct_num_workers=1"],  # (b): one worker, in the launching process
    "beam2": ["--direct_num_workers=2", "--direct_running_mode=multi_threading"],  # (c)
    "beam2p": ["--direct_num_workers=2", "--direct_running_mode=multi_processing"],  # (c')
}


def beam_job(source: str, out_dir: str, variant: str) -> int:
    """(b)/(c)/(c'): the data engine with one worker, two worker threads, two worker processes."""
    from beam_jobs import preprocess

    manifest = preprocess.run([f"--input={source}", f"--output={out_dir}", "--overwrite",
                               f"--image_size={SIZE}"] + BEAM_VARIANTS[variant])
    return manifest["totals"]["written"]


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


def decode_comparison(source: str, count: int, width: int, height: int) -> dict:
    """(d): reduced-scale JPEG decode against full decode, then the same resize, on WxH sources."""
    from isicflow import imaging

    names = sorted(n for n in os.listdir(source) if n.endswith(".jpg"))[:count]
    blobs = []
    for name in names:
        buf = io.BytesIO()
        Image.open(os.path.join(source, name)).convert("RGB").resize(
            (width, height), Image.BICUBIC).save(buf, format="JPEG", quality=90)
        blobs.append(buf.getvalue())

    def timed(fn: Callable[[bytes], np.ndarray]) -> tuple[float, list[np.ndarray]]:
        fn(blobs[0])  # warm-up (TF kernels, allocator)
        start = time.perf_counter()
        results = [fn(b) for b in blobs]
        return time.perf_counter() - start, results

    full_decode_s, _ = timed(lambda b: imaging.decode_image(b).pixels)
    reduced_decode_s, _ = timed(lambda b: imaging.decode_image(b, target=SIZE).pixels)
    full_s, full = timed(lambda b: imaging.resize_pixels(imaging.decode_image(b).pixels, SIZE))
    reduced_s, reduced = timed(lambda b: imaging.resize_pixels(
        imaging.decode_image(b, target=SIZE).pixels, SIZE))
    scores = [psnr(f, r) for f, r in zip(full, reduced)]
    return {"sources": f"{len(blobs)} JPEGs at {width}x{height}",
            "decode_speedup": full_decode_s / reduced_decode_s,
            "decode_and_resize_speedup": full_s / reduced_s,
            "full_decode_ms": 1000 * full_decode_s / len(blobs),
            "reduced_decode_ms": 1000 * reduced_decode_s / len(blobs),
            "psnr_db_min": min(scores), "psnr_db_mean": float(np.mean(scores))}


def tree_rss_bytes(pid: int) -> int:
    """Resident memory of a process and all its descendants, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(entry))
            except (OSError, IndexError, ValueError):
                continue
    total, stack = 0, [pid]
    while stack:
        p = stack.pop()
        stack += children.get(p, [])
        try:
            with open(f"/proc/{p}/statm") as f:
                total += int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except OSError:
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
    """Runs one variant in a child process; returns its images/s and peak tree memory."""
    cmd = [sys.executable, "-m", "benchmarks.bench_preprocess", "--variant", variant,
           "--source", source, "--variant_out", out_dir]
    with tempfile.TemporaryFile("w+") as log:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, text=True)
        peak = 0
        while proc.poll() is None:
            peak = max(peak, tree_rss_bytes(proc.pid))
            time.sleep(0.1)
        out = proc.stdout.read()
        log.seek(0)
        stderr = log.read()
    if proc.returncode != 0:
        raise RuntimeError(f"variant {variant} failed with exit code {proc.returncode}: "
                           f"{stderr[-2000:]}")
    result = json.loads(out.strip().splitlines()[-1])
    result["peak_rss_mb"] = peak / 2**20
    result["stage_images_per_s"] = stage_rate(stderr)
    return result


def median_run(measured: list[dict]) -> dict:
    """The run with the median images/s (the lower middle one for an even count), with every
    run's rate and the highest peak memory of all runs beside it."""
    ordered = sorted(measured, key=lambda r: r["images_per_s"])
    chosen = dict(ordered[(len(ordered) - 1) // 2])
    chosen["runs_images_per_s"] = [r["images_per_s"] for r in measured]
    chosen["peak_rss_mb"] = max(r["peak_rss_mb"] for r in measured)
    return chosen


def run_variant(variant: str, source: str, out_dir: str) -> None:
    """Child side: time only the work, not interpreter and library start-up."""
    if variant != "pillow":
        # Library imports (TensorFlow ~3 s, Beam ~0.5 s) are outside the timed region, as
        # Pillow's is for (a); worker processes of (c') still import them inside it.
        import tensorflow  # noqa: F401
        from beam_jobs import preprocess  # noqa: F401

        logging.basicConfig(level=logging.INFO)
        logging.getLogger().setLevel(logging.INFO)  # the workers' rate lines (stage_rate)
    start = time.perf_counter()
    if variant == "pillow":
        n = pillow_loop(source, out_dir)
    else:
        n = beam_job(source, out_dir, variant)
    seconds = time.perf_counter() - start
    print(json.dumps({"variant": variant, "images": n, "seconds": seconds,
                      "images_per_s": n / seconds}))


NAMES = {"pillow": "(a) Pillow loop, 1 process", "beam1": "(b) Beam job, 1 worker",
         "beam2": "(c) Beam job, 2 worker threads", "beam2p": "(c') Beam job, 2 worker processes"}


def summarize(results: dict, repeat: int) -> tuple[dict, list[str]]:
    """The ratios the goals are stated in, and the printed table, from one run's results."""
    lines = [f"{'variant (median run; images/s include start-up)':<48} {'images':>7} "
             f"{'images/s':>9} {'peak MB':>8} {'decode stage images/s':>22}"]
    for key, name in NAMES.items():
        for tag, suffix in (("", ""), (f", x{repeat}", "_xN")):
            r = results[key + suffix]
            lines.append(f"{name + tag:<48} {r['images']:>7} {r['images_per_s']:>9.1f} "
                         f"{r['peak_rss_mb']:>8.0f} {r.get('stage_images_per_s') or float('nan'):>22.1f}")
    rate = {k: results[k]["images_per_s"] for k in results if k != "decode"}
    stage = {k: results[k].get("stage_images_per_s") or float("nan") for k in rate}
    summary = {}
    lines.append("")
    for c in ("beam2", "beam2p"):
        label = NAMES[c].split(" ")[0]
        summary[f"{c}_over_a"], summary[f"{c}_over_a_xN"] = rate[c] / rate["pillow"], rate[c + "_xN"] / rate["pillow_xN"]
        summary[f"{c}_over_b"], summary[f"{c}_over_b_xN"] = rate[c] / rate["beam1"], rate[c + "_xN"] / rate["beam1_xN"]
        summary[f"{c}_memory_ratio"] = results[c + "_xN"]["peak_rss_mb"] / results[c]["peak_rss_mb"]
        lines += [
            f"{label}/(a) = {summary[f'{c}_over_a']:.2f}x on the sample, {summary[f'{c}_over_a_xN']:.2f}x on x{repeat}  (goal >= 5)",
            f"{label}/(b) = {summary[f'{c}_over_b']:.2f}x on the sample, {summary[f'{c}_over_b_xN']:.2f}x on x{repeat}  (goal >= 1.6)",
            f"{label} decode stage (workers' own rate, start-up excluded), x{repeat}: "
            f"/(a) = {stage[c + '_xN'] / rate['pillow_xN']:.2f}x, /(b) = {stage[c + '_xN'] / stage['beam1_xN']:.2f}x",
            f"{label} peak memory x{repeat} / x1 = {summary[f'{c}_memory_ratio']:.2f}  (goal <= 1.3)"]
    d = results["decode"]
    lines.append(f"(d) {d['sources']}: decode {d['full_decode_ms']:.1f} ms -> "
                 f"{d['reduced_decode_ms']:.1f} ms = {d['decode_speedup']:.2f}x faster "
                 f"(decode+resize {d['decode_and_resize_speedup']:.2f}x), PSNR min "
                 f"{d['psnr_db_min']:.1f} dB mean {d['psnr_db_mean']:.1f} dB  (goal >= 4x at >= 40 dB)")
    summary["d_decode_speedup"], summary["d_psnr_db_min"] = d["decode_speedup"], d["psnr_db_min"]
    return summary, lines


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="../shared/data/isic-uda1")
    p.add_argument("--workdir", default="out/bench-preprocess")
    p.add_argument("--repeat", type=int, default=10, help="copies of the sample for the memory check")
    p.add_argument("--limit", type=int, default=0, help="use only the first N images (tests)")
    p.add_argument("--runs", type=int, default=3,
                   help="runs of every variant; the median by images/s is reported")
    p.add_argument("--variant", help=argparse.SUPPRESS)
    p.add_argument("--source", help=argparse.SUPPRESS)
    p.add_argument("--variant_out", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.variant:
        run_variant(args.variant, args.source, args.variant_out)
        return 0

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    originals = os.path.join(args.workdir, "originals")
    print(f"building original-size JPEGs in {originals} (once) ...", flush=True)
    x1 = build_originals(args.data, originals, 1, args.limit)
    xn = build_originals(args.data, originals, args.repeat, args.limit)
    runs: dict[str, list[dict]] = {}
    for run in range(args.runs):  # interleaved, so a slow spell of the machine hits every variant
        for variant in ("pillow", *BEAM_VARIANTS):
            for tag, source in (("", x1), ("_xN", xn)):
                print(f"run {run + 1}/{args.runs}: {variant}{tag} ...", flush=True)
                runs.setdefault(variant + tag, []).append(
                    measure(variant, source, os.path.join(args.workdir, "runs", variant + tag)))
    results = {key: median_run(measured) for key, measured in runs.items()}
    results["decode"] = decode_comparison(x1, min(20, args.limit or 20), 3072, 2304)
    summary, lines = summarize(results, args.repeat)
    table = "\n".join(lines)
    print(table)
    results["summary"] = summary
    with open(os.path.join(args.workdir, "bench_preprocess.json"), "w") as f:
        json.dump(results, f, indent=1)
    with open(os.path.join(args.workdir, "bench_preprocess.md"), "w") as f:
        f.write("```\n" + table + "\n```\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
