"""ISIC archive -> sharded TFRecords: the data engine.

    python -m beam_jobs.preprocess --runner=DirectRunner --input=DIR --output=DIR [flags]

Without --input it runs on the embedded SYNTHETIC default dataset. `--help` lists our flags;
every other flag is a Beam pipeline option (--runner, --direct_num_workers, --project, ...).
"""
from __future__ import annotations

import dataclasses
import logging
import sys
from typing import Optional, Sequence

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions, SetupOptions, StandardOptions

from beam_jobs import fileio, synthetic, writing
from beam_jobs.config import PreprocessConfig, parse_config
from beam_jobs.transforms import (DUPLICATE, FILTERED, KEPT, NEAR_DUPLICATES, REJECTED,
                                  FilterRecords, ProcessImage, plan_shards)
from isicflow.manifest import MANIFEST_NAME, REJECTS_NAME, join_path, read_manifest
from isicflow.metadata import LesionRecord, Rejection


class OutputNotEmpty(Exception):
    """--output holds files and --overwrite was not given (or they are not ours to delete)."""


class IsicToTFRecords(beam.PTransform):
    """Layout records -> filter -> decode/resize/encode (pixels to spool files) -> plan (dedup,
    balance, split, shards) -> write shards -> manifest.

    Reads the layout from the files stage_layout wrote into config.output (run() does both).
    """

    def __init__(self, config: PreprocessConfig, layout_result):
        super().__init__()
        self.config = config
        self.layout = layout_result

    def expand(self, pbegin):
        cfg, p = self.config, pbegin.pipeline
        # The layout's records come from a file the launcher wrote (stage_layout), not from
        # beam.Create, which would pickle every record into the pipeline itself: seconds of
        # compression at tens of thousands of images, and past Dataflow's job-graph size limit.
        records_path, rejections_path = layout_files(cfg.output)
        records = (p
                   | "RecordsFile" >> beam.Create([records_path])
                   | "ReadRecords" >> beam.FlatMap(read_json_lines, LesionRecord.from_json)
                   | "SpreadRecords" >> beam.Reshuffle())
        metadata_rejections = (p
                               | "MetadataRejectionsFile" >> beam.Create([rejections_path])
                               | "ReadMetadataRejections" >> beam.FlatMap(
                                   read_json_lines, Rejection.from_json))

        kept = records | "Filter" >> beam.ParDo(FilterRecords(cfg)).with_outputs(
            FILTERED, main="kept")
        # The encoded pixels go to spool files; only light elements travel on from here.
        processed = kept.kept | "DecodeResizeEncode" >> beam.ParDo(ProcessImage(cfg)).with_outputs(
            REJECTED, FILTERED, main="images")
        # Dedup, balance, splits and shard counts need every image, and a ProcessedImage is
        # small (its pixels are spooled), so one step plans and emits whole shards.
        # (Grouped under one key: cheaper on DirectRunner than a ToList combine, which merges
        # lists, or a side input, whose values the worker's state cache measures object by
        # object.)
        planned = (processed.images
                   | "KeyForPlan" >> beam.Map(lambda image: (None, image))
                   | "CollectImages" >> beam.GroupByKey()
                   | "PlanShards" >> beam.FlatMap(_plan_shards_of_group, cfg).with_outputs(
                       DUPLICATE, FILTERED, KEPT, NEAR_DUPLICATES, main="shards"))
        shards = (planned.shards
                  | "SpreadShards" >> beam.Reshuffle()
                  | "WriteShards" >> beam.ParDo(writing.WriteShard(cfg)))
        rejections = ((metadata_rejections, kept[FILTERED], processed[REJECTED],
                       processed[FILTERED], planned[DUPLICATE], planned[FILTERED])
                      | "AllRejections" >> beam.Flatten())
        inputs_read = len(self.layout.records) + len(self.layout.rejections)
        return (p
                | "FinalizeTrigger" >> beam.Create([None])
                | "Finalize" >> beam.Map(
                    writing.finalize, cfg, self.layout.layout, inputs_read,
                    dict(self.layout.counters),
                    shards=beam.pvalue.AsList(shards),
                    rejections=beam.pvalue.AsList(rejections),
                    # No image left to plan (all filtered or rejected): nothing was kept.
                    kept=beam.pvalue.AsSingleton(planned[KEPT], default_value=()),
                    near_duplicate_groups=beam.pvalue.AsSingleton(planned[NEAR_DUPLICATES],
                                                                  default_value=())))


def _plan_shards_of_group(group, config: PreprocessConfig):
    _, images = group
    yield from plan_shards(list(images), config)


def layout_files(output: str) -> tuple[str, str]:
    """Where stage_layout puts the layout's records and rejections (JSON lines, one each)."""
    incomplete = join_path(output, writing.INCOMPLETE_DIR)
    return join_path(incomplete, "records.jsonl"), join_path(incomplete, "metadata_rejects.jsonl")


def stage_layout(config: PreprocessConfig, layout_result) -> None:
    """Writes the layout's records and rejections where IsicToTFRecords reads them."""
    records_path, rejections_path = layout_files(config.output)
    for path, items in ((records_path, layout_result.records),
                        (rejections_path, layout_result.rejections)):
        fileio.write_bytes(path, "".join(item.to_json() + "\n" for item in items).encode("utf-8"))


def read_json_lines(path: str, parse):
    """One parsed item per line of a JSON-lines file (the launcher's records)."""
    for line in fileio.read_bytes(path).decode("utf-8").splitlines():
        if line:
            yield parse(line)


def prepare_output(config: PreprocessConfig) -> None:
    """Refuses a non-empty --output without --overwrite; with it, clears only our own output."""
    import tensorflow as tf

    out = config.output
    if not tf.io.gfile.exists(out):
        tf.io.gfile.makedirs(out)
        return
    entries = tf.io.gfile.listdir(out)
    if not entries:
        return
    if not config.overwrite:
        raise OutputNotEmpty(f"--output {out!r} is not empty ({len(entries)} entries); "
                             "pass --overwrite to replace it")
    ours = {MANIFEST_NAME, writing.INCOMPLETE_DIR, REJECTS_NAME}
    names = [e.rstrip("/") for e in entries]
    foreign = sorted(n for n in names if n not in ours and not n.isdigit())  # sizes are digits
    if foreign:
        raise OutputNotEmpty(f"--output {out!r} holds files isicflow did not write "
                             f"({foreign[:5]}); refusing to delete them even with --overwrite")
    manifest = join_path(out, MANIFEST_NAME)
    if tf.io.gfile.exists(manifest):
        tf.io.gfile.remove(manifest)  # first, so a dataset is never half old and half new
    for entry in entries:
        path = join_path(out, entry.rstrip("/"))
        if tf.io.gfile.isdir(path):
            tf.io.gfile.rmtree(path)
        elif tf.io.gfile.exists(path):
            tf.io.gfile.remove(path)


def format_summary(manifest: dict) -> str:
    """The table printed at the end of a run."""
    lines = []
    if manifest.get("synthetic"):
        lines.append("NOTE: SYNTHETIC embedded default dataset (not real ISIC images)")
    t = manifest["totals"]
    lines.append(f"layout {manifest['layout']}: read {t['read']} = written {t['written']} + "
                 f"rejected {t['rejected']} + filtered {t['filtered']} + "
                 f"duplicates {t['duplicates']}")
    lines.append(f"{'size':>6} {'split':<11} {'records':>8} {'benign':>7} {'malignant':>9} "
                 f"{'unknown':>7} {'shards':>6} {'MB':>8}")
    for size, per_split in manifest["datasets"].items():
        for split, info in per_split.items():
            c = info["counts"]
            mb = sum(s["bytes"] for s in info["shards"]) / 2**20
            lines.append(f"{size:>6} {split:<11} {info['records']:>8} {c.get('benign', 0):>7} "
                         f"{c.get('malignant', 0):>9} {c.get('unknown', 0):>7} "
                         f"{len(info['shards']):>6} {mb:>8.2f}")
    for reason, n in manifest["reasons"].items():
        lines.append(f"  {reason}: {n}")
    return "\n".join(lines)


def make_runner(options: PipelineOptions):
    """The runner for --runner: DirectRunner (or none) means Beam's FnApiRunner, explicitly.

    Beam 2.77's DirectRunner first tries PrismRunner, which downloads a Go binary from GitHub at
    run time and ignores --direct_running_mode; offline it fails and falls back to the FnApiRunner
    after a delay. We go straight to the FnApiRunner, the runner the DirectRunner falls back to,
    so the job never downloads anything and its multi-process mode works as documented. Any other
    --runner (DataflowRunner, FlinkRunner, SparkRunner, PrismRunner) is passed to Beam as given.
    """
    standard = options.view_as(StandardOptions)
    if standard.streaming:
        raise ValueError("the data engine is a batch job: drop --streaming")
    if standard.runner not in (None, "DirectRunner", "direct"):
        return None  # beam.Pipeline resolves it from the options
    from apache_beam.portability.api import beam_provision_api_pb2
    from apache_beam.runners.portability.fn_api_runner import fn_runner
    from apache_beam.runners.portability.portable_runner import JobServiceHandle

    encoded = JobServiceHandle.encode_pipeline_options(options.get_all_options())
    return fn_runner.FnApiRunner(provision_info=fn_runner.ExtendedProvisionInfo(
        beam_provision_api_pb2.ProvisionInfo(pipeline_options=encoded)))


def run(argv: Optional[Sequence[str]] = None, save_main_session: bool = True) -> dict:
    """Runs the job; returns the manifest it wrote. Tests call this directly."""
    from beam_jobs import layouts

    config, beam_args = parse_config(argv)
    if config.input is None:
        config = dataclasses.replace(config, input=synthetic.ensure_default_dataset())
    dx_labels = layouts.parse_dx_map(config.dx_map) if config.dx_map else None
    layout_result = layouts.read_layout(config.input, config.layout, dx_labels)
    logging.info("layout %s: %d records, %d metadata rejections", layout_result.layout,
                 len(layout_result.records), len(layout_result.rejections))
    options = PipelineOptions(beam_args)
    options.view_as(SetupOptions).save_main_session = save_main_session
    FileSystems.set_options(options)  # e.g. Beam's S3 client needs them before stage_layout
    prepare_output(config)
    stage_layout(config, layout_result)

    pipeline = beam.Pipeline(runner=make_runner(options), options=options)
    _ = pipeline | "IsicToTFRecords" >> IsicToTFRecords(config, layout_result)
    result = pipeline.run()
    result.wait_until_finish()

    manifest = read_manifest(config.output)  # what Finalize wrote, version-checked
    print(format_summary(manifest))
    counters = result.metrics().query()["counters"]
    for c in sorted(counters, key=lambda c: c.key.metric.name):
        print(f"  beam counter {c.key.metric.name}: {c.committed}")
    return manifest


def main(argv: Optional[Sequence[str]] = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger().setLevel(logging.INFO)  # Beam installs a root handler before us
    logging.getLogger("apache_beam").setLevel(logging.WARNING)  # keep our progress lines readable
    try:
        run(argv if argv is not None else sys.argv[1:])
    except OutputNotEmpty as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
