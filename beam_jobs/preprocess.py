"""ISIC archive -> sharded TFRecords: the data engine.

    python -m beam_jobs.preprocess --runner=DirectRunner --input=DIR --output=DIR [flags]

Without --input it runs on the embedded SYNTHETIC default dataset. `--help` lists our flags with
their defaults; every other flag must be a Beam pipeline option (--runner, --direct_num_workers,
--direct_running_mode, --temp_location, --setup_file, --project, ...).

Exit status: 0 done; 2 a bad flag, an argument that is neither our flag nor a Beam pipeline
option, or an input problem found before the pipeline starts (one line on stderr,
`preprocess: error: FLAG or PATH: ... what would fix it`, never a traceback; an --output folder
the run created is removed again); 3 the run wrote 0 records, left the train or validation split
empty or rejected over a third of its inputs (the diagnosis on stdout after the summary, one line
`preprocess: error: no usable dataset from ...` on stderr; the manifest is written all the same;
--allow_empty turns it into a warning and exit 0).
"""
from __future__ import annotations

import time

_PROCESS_START_FALLBACK = time.time()  # when /proc is unavailable: the launcher's first import

import contextlib
import dataclasses
import gc
import json
import logging
import math
import shutil
import sys
import tempfile
import warnings
from importlib import metadata
from typing import Optional, Sequence


@contextlib.contextmanager
def _quiet_beam_import():
    """Importing Beam says two things no user of the engine can act on, before any flag is read
    (so even before --help): google-api-core's FutureWarning that Python 3.11 reaches its end of
    life in 2027, and Beam's root-logger warning "apitools not found" (the BigQuery client, which
    the engine never uses). Both are silenced for the import only, by message; every other
    warning and log line passes. The root logger gets a NullHandler meanwhile, so that Beam's
    warning does not install logging's default handler before main() configures logging.

    Also, google-api-core calls importlib.metadata.packages_distributions() only to name itself
    in that warning: a read of every installed distribution's RECORD, 0.2-0.3 s of the
    launcher's start-up (python -X importtime). For the import only, that scan answers {}."""
    scan = metadata.packages_distributions
    metadata.packages_distributions = lambda: {}
    root = logging.getLogger()
    placeholder = logging.NullHandler()
    apitools = _DropMessage("apitools not found")
    root.addHandler(placeholder)
    root.addFilter(apitools)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="You are using a Python version",
                                    category=FutureWarning, module="google.api_core")
            yield
    finally:
        metadata.packages_distributions = scan
        root.removeFilter(apitools)
        root.removeHandler(placeholder)


class _DropMessage(logging.Filter):
    def __init__(self, prefix: str):
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefix)


with _quiet_beam_import():
    import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions, SetupOptions, StandardOptions

from beam_jobs import synthetic, timeline, writing
from beam_jobs.config import ERROR_PREFIX, PreprocessConfig, parse_config
from beam_jobs.transforms import (DUPLICATE, FILTERED, KEPT, NEAR_DUPLICATES, REJECTED,
                                  FilterRecords, ImageKey, ProcessImage, plan_shards)
from isicflow import fileio
from isicflow.dataset import MANIFEST_NAME, REJECTS_NAME, read_manifest
from isicflow.fileio import join_path
from isicflow.metadata import UNKNOWN, LesionRecord, Rejection

_IMPORTS_DONE = time.time()


class InputError(ValueError):
    """An input problem found before the pipeline starts; main() prints it as one line, exit 2."""


class OutputNotEmpty(InputError):
    """--output holds files and --overwrite was not given (or they are not ours to delete)."""


MAX_REJECTED_SHARE = 1 / 3  # more rejected inputs than this fails the run (see empty_problems)


class EmptyDataset(RuntimeError):
    """The run wrote no record, or left a split the trainers need empty; main() exits 3.

    str() is the diagnosis block (format_diagnosis); the manifest was written all the same.
    """

    def __init__(self, diagnosis: str, manifest: dict):
        super().__init__(diagnosis)
        self.manifest = manifest


EXIT_INPUT, EXIT_EMPTY = 2, 3
NEEDED_SPLITS = ("train", "validation")  # what the trainers read


class IsicToTFRecords(beam.PTransform):
    """Layout records -> filter -> decode/resize/encode (pixels to spool files) -> plan (dedup,
    balance, split, shards) -> write shards -> manifest.

    Reads the layout from the files stage_layout wrote into config.output (run() does both).
    """

    def __init__(self, config: PreprocessConfig, layout: "StagedLayout",
                 progress_dir: Optional[str] = None):
        super().__init__()
        self.config = config
        self.layout = layout
        self.progress_dir = progress_dir  # timeline.ProgressCounter's files (None: no progress)

    def expand(self, pbegin):
        cfg, p = self.config, pbegin.pipeline
        # The layout's records come from a file the launcher wrote (stage_layout), not from
        # beam.Create, which would pickle every record into the pipeline itself: seconds of
        # compression at tens of thousands of images, and past Dataflow's job-graph size limit.
        # What is spread over the workers is byte ranges of that file, so no runner holds the
        # records themselves in a shuffle (the FnApiRunner keeps a shuffle's elements in memory).
        records_path, rejections_path = layout_files(cfg.output)
        records = (p
                   | "RecordChunks" >> beam.Create(self.layout.chunks)
                   | "SpreadChunks" >> beam.Reshuffle()
                   | "ReadRecords" >> beam.FlatMap(read_record_chunk, records_path))
        metadata_rejections = (p
                               | "MetadataRejectionsFile" >> beam.Create([rejections_path])
                               | "ReadMetadataRejections" >> beam.FlatMap(
                                   read_json_lines, Rejection.from_json))

        kept = records | "Filter" >> beam.ParDo(
            FilterRecords(cfg, self.progress_dir)).with_outputs(FILTERED, main="kept")
        # The records and encoded pixels go to spool files; only small ImageKeys travel on.
        processed = kept.kept | "DecodeResizeEncode" >> beam.ParDo(
            ProcessImage(cfg, self.progress_dir)).with_outputs(REJECTED, FILTERED, main="images")
        # Dedup, balance, splits and shard counts need every image, and an ImageKey is small
        # (its record and pixels are spooled), so one step plans and emits whole shards.
        # (Grouped under one key: cheaper on DirectRunner than a ToList combine, which merges
        # lists, or a side input, whose values the worker's state cache measures object by
        # object.)
        planned = (processed.images
                   | "KeyForPlan" >> beam.Map(lambda image: (None, image.to_wire()))
                   | "CollectImages" >> beam.GroupByKey()
                   | "PlanShards" >> beam.FlatMap(_plan_shards_of_group, cfg).with_outputs(
                       DUPLICATE, FILTERED, KEPT, NEAR_DUPLICATES, main="shards"))
        shards = (planned.shards
                  | "SpreadShards" >> beam.Reshuffle()
                  | "WriteShards" >> beam.ParDo(writing.WriteShard(cfg)))
        rejections = ((metadata_rejections, kept[FILTERED], processed[REJECTED],
                       processed[FILTERED], planned[DUPLICATE], planned[FILTERED])
                      | "AllRejections" >> beam.Flatten())
        return (p
                | "FinalizeTrigger" >> beam.Create([None])
                | "Finalize" >> beam.Map(
                    writing.finalize, cfg, self.layout.layout, self.layout.inputs,
                    dict(self.layout.counters),
                    layout_info={"downloads": dict(self.layout.downloads),
                                 "metadata_files": list(self.layout.metadata_files)},
                    shards=beam.pvalue.AsList(shards),
                    rejections=beam.pvalue.AsList(rejections),
                    # No image left to plan (all filtered or rejected): nothing was kept.
                    kept=beam.pvalue.AsSingleton(planned[KEPT], default_value=()),
                    near_duplicate_groups=beam.pvalue.AsSingleton(planned[NEAR_DUPLICATES],
                                                                  default_value=())))


def _plan_shards_of_group(group, config: PreprocessConfig):
    _, keys = group
    yield from plan_shards([ImageKey.from_wire(fields) for fields in keys], config)


def layout_files(output: str) -> tuple[str, str]:
    """Where stage_layout puts the layout's records and rejections (JSON lines, one each)."""
    incomplete = join_path(output, writing.INCOMPLETE_DIR)
    return join_path(incomplete, "records.jsonl"), join_path(incomplete, "metadata_rejects.jsonl")


RECORD_CHUNKS = 64            # the records are spread over the workers in about this many
MAX_RECORDS_PER_CHUNK = 256   # byte ranges of records.jsonl, of at most this many records


@dataclasses.dataclass(frozen=True)
class StagedLayout:
    """What the pipeline needs of the layout once stage_layout wrote its records to a file:
    counts and byte ranges, not the records (the launcher would hold them for the whole run)."""

    layout: str
    inputs: int    # records + the layout's rejections: read = written + rejected + ...
    records: int   # the progress line's total
    counters: dict
    downloads: dict
    metadata_files: list
    chunks: tuple  # ((start, end), ...): byte ranges of records.jsonl, whole lines each


def records_per_chunk(records: int) -> int:
    """Enough chunks for the workers to share evenly, few enough to stay cheap to shuffle."""
    return max(1, min(MAX_RECORDS_PER_CHUNK, math.ceil(records / RECORD_CHUNKS)))


def stage_layout(config: PreprocessConfig, layout_result) -> StagedLayout:
    """Writes the layout's records and rejections where IsicToTFRecords reads them, a line at a
    time; returns what the pipeline needs of the layout, with the records' byte ranges."""
    records_path, rejections_path = layout_files(config.output)
    per_chunk = records_per_chunk(len(layout_result.records))
    chunks, start, offset = [], 0, 0
    with fileio.open_write(records_path) as f:
        for i, record in enumerate(layout_result.records, 1):
            line = (record.to_json() + "\n").encode("utf-8")
            f.write(line)
            offset += len(line)
            if i % per_chunk == 0 or i == len(layout_result.records):
                chunks.append((start, offset))
                start = offset
    fileio.write_bytes(rejections_path, "".join(
        item.to_json() + "\n" for item in layout_result.rejections).encode("utf-8"))
    return StagedLayout(layout_result.layout,
                        len(layout_result.records) + len(layout_result.rejections),
                        len(layout_result.records), dict(layout_result.counters),
                        dict(layout_result.downloads), list(layout_result.metadata_files),
                        tuple(chunks))


def read_record_chunk(chunk: tuple[int, int], path: str):
    """The records in one byte range of records.jsonl (stage_layout's chunks)."""
    start, end = chunk
    with fileio.open_read(path) as f:
        f.seek(start)
        data = f.read(end - start)
    for line in data.decode("utf-8").splitlines():
        yield LesionRecord.from_json(line)


def read_json_lines(path: str, parse):
    """One parsed item per line of a JSON-lines file (the layout's rejections)."""
    for line in fileio.read_bytes(path).decode("utf-8").splitlines():
        if line:
            yield parse(line)


def check_output(config: PreprocessConfig) -> list[str]:
    """--output's entries, if it exists; OutputNotEmpty when it is a file, or holds files and
    --overwrite was not given, or holds files that are not ours (never deleted)."""
    out = config.output
    if not fileio.exists(out):
        return []
    if not fileio.isdir(out):
        raise OutputNotEmpty(f"--output {out!r} is a file; name a folder to create")
    entries = fileio.listdir(out)
    if entries and not config.overwrite:
        raise OutputNotEmpty(f"--output {out!r} is not empty ({len(entries)} entries); "
                             "pass --overwrite to replace it")
    ours = {MANIFEST_NAME, writing.INCOMPLETE_DIR, REJECTS_NAME}
    names = [e.rstrip("/") for e in entries]
    foreign = sorted(n for n in names if n not in ours and not n.isdigit())  # sizes are digits
    if foreign:
        raise OutputNotEmpty(f"--output {out!r} holds files isicflow did not write "
                             f"({foreign[:5]}); refusing to delete them even with --overwrite")
    return entries


def prepare_output(config: PreprocessConfig) -> None:
    """Refuses a non-empty --output without --overwrite; with it, clears only our own output."""
    out = config.output
    entries = check_output(config)
    if not fileio.isdir(out):
        fileio.makedirs(out)
        return
    if not entries:
        return
    manifest = join_path(out, MANIFEST_NAME)
    if fileio.exists(manifest):
        fileio.remove(manifest)  # first, so a dataset is never half old and half new
    for entry in entries:
        path = join_path(out, entry.rstrip("/"))
        if fileio.isdir(path):
            fileio.delete_tree(path)
        elif fileio.exists(path):
            fileio.remove(path)


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
    downloads = manifest.get("downloads", {})
    if set(downloads) - {"."}:
        for name, info in downloads.items():
            lines.append(f"  download {name}/: {info['layout']}, read {info['records']} records, "
                         f"written {info['written']}")
    return "\n".join(lines)


def empty_problems(manifest: dict, config: PreprocessConfig) -> list[str]:
    """Why this dataset is of no use to the trainers: no record, train/validation empty (a split
    whose requested fraction is 0 is not asked for, so not a problem; with --folds test too: a
    cross-validation fold that tests nothing), or more than
    MAX_REJECTED_SHARE of the inputs rejected (a misread download looks like that; filters and
    duplicates are choices, not failures, and do not count)."""
    totals = manifest["totals"]
    if totals["written"] == 0:
        return ["0 records written"]
    problems = []
    if totals["rejected"] > MAX_REJECTED_SHARE * totals["read"]:
        problems.append(f"{totals['rejected']} of {totals['read']} inputs rejected (more than "
                        f"{MAX_REJECTED_SHARE:.0%})")
    first = next(iter(manifest["datasets"].values()), {})
    needed = NEEDED_SPLITS + (("test",) if config.folds else ())
    for split, fraction in zip(("train", "validation", "test"), config.split_fractions):
        if split in needed and fraction > 0 and first.get(split, {}).get("records", 0) == 0:
            problems.append(f"split {split} is empty" + (
                f" (--folds={config.folds} --fold={config.fold}: fewer patient/lesion groups "
                "than folds?)" if config.folds else ""))
    return problems


def describe_metadata_file(entry: dict) -> str:
    """One line per metadata file: path, role, what it was read as or why not, its header."""
    count = f" ({entry['count']} files)" if entry.get("count") else ""
    header = f" header {','.join(entry['header'])}" if entry.get("header") else ""
    return f"{entry['path']}{count}: {entry['role']} - {entry['why']}{header}"


def format_diagnosis(manifest: dict, problems: list[str], input_path: str) -> str:
    """The one-screen diagnosis of an empty or one-sided run."""
    t = manifest["totals"]
    lines = [f"no usable dataset from {input_path}: {'; '.join(problems)}",
             f"  layout {manifest['layout']}: read {t['read']} = written {t['written']} + "
             f"rejected {t['rejected']} + filtered {t['filtered']} + duplicates {t['duplicates']}"]
    reasons = sorted(manifest["reasons"].items(), key=lambda kv: (-kv[1], kv[0]))
    if reasons:
        lines.append("  top reasons: " + ", ".join(f"{r} {n}" for r, n in reasons[:6]))
    for name, info in manifest.get("downloads", {}).items():
        lines.append(f"  download {name}: {info.get('layout')}, {info.get('records', 0)} records "
                     f"read, {info.get('written', 0)} written")
    files = manifest.get("metadata_files", [])
    lines.append(f"  metadata files ({len(files)}):" if files else "  metadata files: none found")
    shown = 12
    lines.extend(f"    {describe_metadata_file(e)}" for e in files[:shown])
    if len(files) > shown:
        lines.append(f"    ... {len(files) - shown} more in the manifest's metadata_files")
    if any(e["role"] == "unused" and not e.get("kind") and e.get("header") for e in files):
        lines.append("  a table no ISIC layout knows can be read with --metadata_csv=PATH "
                     "--id_column=NAME --label_column=NAME [--malignant_values=...]")
    lines.append("  pass --allow_empty to accept this output; see manifest.json and rejects.jsonl")
    return "\n".join(lines)


def _input_error(error: Exception, path: Optional[str]) -> InputError:
    """One line naming the path: tracebacks and multi-line messages are for bugs, not inputs."""
    text = " ".join(str(error).split())
    if path and path not in text:
        text = f"{path}: {text}"
    return InputError(text)


def read_input(config: PreprocessConfig):
    """The layout's records, or InputError (one line) for anything wrong with the input."""
    from beam_jobs import layouts

    try:
        dx_labels = layouts.parse_dx_map(config.dx_map) if config.dx_map else None
    except ValueError as error:  # names --dx_map and the piece
        raise InputError(" ".join(str(error).split())) from error
    custom = None
    if config.metadata_csv:
        from beam_jobs.layouts.custom import DEFAULT_MALIGNANT_VALUES
        custom = layouts.CustomTable(
            config.metadata_csv, config.id_column, config.label_column,
            config.malignant_values or DEFAULT_MALIGNANT_VALUES, config.benign_values,
            config.patient_column, config.lesion_column, config.diagnosis_column)
        if not fileio.exists(config.metadata_csv):
            raise InputError(f"--metadata_csv={config.metadata_csv}: no such file; pass the "
                             "CSV that has one row per image")
        try:
            custom.check()
        except (OSError, ValueError) as error:
            raise _input_error(error, config.metadata_csv) from error
    try:
        return layouts.read_layout(config.input, config.layout, dx_labels, custom)
    except (OSError, ValueError) as error:
        raise _input_error(error, config.input) from error


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
        raise InputError("the data engine is a batch job: drop --streaming")
    if standard.runner not in (None, "DirectRunner", "direct"):
        return None  # beam.Pipeline resolves it from the options
    from apache_beam.portability.api import beam_provision_api_pb2
    from apache_beam.runners.portability.fn_api_runner import fn_runner
    from apache_beam.runners.portability.portable_runner import JobServiceHandle

    prompt_state_sampling()
    whole_element_flushes()

    encoded = JobServiceHandle.encode_pipeline_options(options.get_all_options())
    return fn_runner.FnApiRunner(provision_info=fn_runner.ExtendedProvisionInfo(
        beam_provision_api_pb2.ProvisionInfo(pipeline_options=encoded)))


def whole_element_flushes() -> None:
    """Beam 2.77's gRPC data channels (multi_threading's in-process workers, and the runner's
    own data server in both multi_threading and multi_processing) flush each output stream every
    DATA_BUFFER_TIME_LIMIT_MS (1 s) from a timer thread that takes no lock against the thread
    encoding into the stream. A flush that lands between the parts of an element cuts it in two
    Data messages, which the runner decodes one by one: "Invalid PaneInfoEncoding", or a garbage
    window count that fills all memory with GlobalWindows (tens of GB); and, by the code (not
    seen), a write between the flush's get() and clear() is dropped. With 0 the streams flush
    only by size, from the writing thread between elements (maybe_flush), or whole at close:
    nothing a batch job needs, as the runner waits for the end of each bundle's output anyway.
    docs/engine.md, "The local runner's timed-flush race"."""
    from apache_beam.runners.portability.fn_api_runner import worker_handlers

    if not hasattr(worker_handlers, "DATA_BUFFER_TIME_LIMIT_MS"):  # private to Beam 2.77
        raise RuntimeError(f"apache-beam {metadata.version('apache-beam')}: "
                           "worker_handlers.DATA_BUFFER_TIME_LIMIT_MS is gone; the engine was "
                           "written against 2.77 (constraints.txt)")
    # Read when each embedded worker and the data server start (EmbeddedGrpcWorkerHandler's
    # `or` turns a config's 0 back into this default, so the default itself must be 0).
    worker_handlers.DATA_BUFFER_TIME_LIMIT_MS = 0


STATE_SAMPLING_MS = 10


def prompt_state_sampling() -> None:
    """Beam's state sampler (per-step timing of a bundle) is a thread that sleeps up to 200 ms
    between samples, and the end of every bundle joins it: up to 200 ms idle per bundle, ~100 ms
    on average after the long decode bundle alone (measured by sampling the stacks of a run:
    the main thread waits in StateSampler.stop). The FnApiRunner's in-process workers (one
    worker, or multi_threading) sample every STATE_SAMPLING_MS instead; the sampler works
    without the GIL and only adds elapsed time to a counter, so a shorter period costs nothing
    measurable. Worker processes (multi_processing, other runners) keep Beam's default."""
    from apache_beam.runners.worker import statesampler

    init = statesampler.StateSampler.__init__
    if init.__defaults__ != (STATE_SAMPLING_MS,):
        init.__defaults__ = (STATE_SAMPLING_MS,)


def run(argv: Optional[Sequence[str]] = None, save_main_session: bool = True,
        phases: Optional[timeline.Timeline] = None) -> dict:
    """Runs the job; returns the manifest it wrote. Tests call this directly.

    `phases` (or a fresh one) receives the run's timeline; --profile_phases prints it.
    """
    phases = phases if phases is not None else new_timeline()
    config, beam_args = parse_config(argv)
    phases.mark("run_started")
    if config.input is None:
        config = dataclasses.replace(config, input=synthetic.ensure_default_dataset())
    output_existed = fileio.exists(config.output)
    try:
        pipeline, layout = _checked_start(config, beam_args, save_main_session, phases)
    except InputError:
        if not output_existed and fileio.isdir(config.output):
            fileio.delete_tree(config.output)  # a refused run leaves nothing behind
        raise
    progress_dir = tempfile.mkdtemp(prefix="isicflow-progress-") if runs_here(pipeline) else None
    try:
        _ = pipeline | "IsicToTFRecords" >> IsicToTFRecords(config, layout, progress_dir)
        phases.mark("pipeline_started")
        reporter = progress_dir and timeline.ProgressReporter(
            progress_dir, layout.records, logging.info).start()
        try:
            result = pipeline.run()
            result.wait_until_finish()
        finally:
            if reporter:
                reporter.stop()
    finally:
        if progress_dir:
            shutil.rmtree(progress_dir, ignore_errors=True)
    phases.mark("pipeline_done")
    phases.add_beam_result(result)

    manifest = read_manifest(config.output)  # what Finalize wrote, version-checked
    print(format_summary(manifest))
    counters = result.metrics().query()["counters"]
    for c in sorted(counters, key=lambda c: c.key.metric.name):
        print(f"  beam counter {c.key.metric.name}: {c.committed}")
    problems = empty_problems(manifest, config)
    if problems:
        diagnosis = format_diagnosis(manifest, problems, config.input)
        if not config.allow_empty:
            raise EmptyDataset(diagnosis, manifest)
        logging.warning("--allow_empty: %s", diagnosis)
    phases.mark("run_done")
    if config.profile_phases:
        print_timeline(phases)
    return manifest


def _checked_start(config: PreprocessConfig, beam_args: list[str], save_main_session: bool,
                   phases: timeline.Timeline):
    """Everything a user can get wrong, checked before the pipeline starts (InputError, one
    line): the runner and --output first (cheap), then the input and its layout; --output is
    created and staged last, so a refused input writes nothing."""
    options = PipelineOptions(beam_args)
    options.view_as(SetupOptions).save_main_session = save_main_session
    FileSystems.set_options(options)  # e.g. Beam's S3 client needs them before any file access
    runner = make_runner(options)  # InputError for --streaming
    try:
        pipeline = beam.Pipeline(runner=runner, options=options)
    except (ValueError, ImportError) as error:  # a --runner Beam does not know, or a class
        # path (beam_jobs.dask_runner.DaskRunner) that does not import
        runner_name = options.view_as(StandardOptions).runner
        raise InputError(f"--runner={runner_name}: {' '.join(str(error).split())}") from error
    check_output(config)
    layout_result = read_input(config)
    phases.mark("layout_read")
    logging.info("layout %s: %d records, %d metadata rejections", layout_result.layout,
                 len(layout_result.records), len(layout_result.rejections))
    for name, info in layout_result.downloads.items():
        if name != ".":
            logging.info("download %s/: %s, %d records", name, info["layout"], info["records"])
    for entry in layout_result.metadata_files:
        log = logging.warning if entry["role"] == "unused" else logging.info
        log("metadata file %s", describe_metadata_file(entry))
    check_labels(config, layout_result)
    try:
        prepare_output(config)
    except OSError as error:
        raise InputError(f"--output {config.output!r}: cannot create it ({error}); name a "
                         "folder you can write") from error
    layout = stage_layout(config, layout_result)
    phases.mark("output_staged")
    return pipeline, layout  # the records stay in the file: not held for the whole run


def runs_here(pipeline: beam.Pipeline) -> bool:
    """Whether the workers run on this machine (make_runner's FnApiRunner: threads or local
    processes), so their progress files can be read by the launcher."""
    from apache_beam.runners.portability.fn_api_runner import fn_runner

    return isinstance(pipeline.runner, fn_runner.FnApiRunner)


def check_labels(config: PreprocessConfig, layout_result) -> None:
    """A table read as a layout but with no label column at all leaves every image unlabelled:
    with --label_policy=benign_malignant all of them would be filtered, so say which columns
    were looked for instead (only when no image has a label: a test-set download beside a
    labelled one is fine)."""
    if config.label_policy != "benign_malignant":
        return
    unlabelled = [e for e in layout_result.metadata_files if e.get("label_columns_missing")]
    if not unlabelled or any(r.label != UNKNOWN for r in layout_result.records):
        return
    first = unlabelled[0]
    more = f" (and {len(unlabelled) - 1} more such tables)" if len(unlabelled) > 1 else ""
    raise InputError(
        f"{join_path(config.input, first['path'])}: read as {first['kind']} but has no label "
        f"column (looked for {' or '.join(first['label_columns_missing'])}){more}, so every "
        "image would be filtered as unlabelled; add one of those columns, pass "
        "--metadata_csv=PATH --id_column=isic_id --label_column=NAME to take the label from "
        "another column, or --label_policy=all to keep the images unlabelled")


def new_timeline() -> timeline.Timeline:
    """A timeline from this process's start (from /proc; else the launcher's first import)."""
    phases = timeline.Timeline(timeline.process_start_time() or _PROCESS_START_FALLBACK)
    phases.mark("imports_done", _IMPORTS_DONE)
    return phases


def print_timeline(phases: timeline.Timeline) -> None:
    """The table, then one JSON line for tools (benchmarks.bench_preprocess parses it)."""
    print("timeline of this run (--profile_phases):")
    print(phases.format())
    print(timeline.JSON_PREFIX + json.dumps(phases.to_json()), flush=True)


# glibc's initial mmap threshold; pinned, it stays there (see pin_malloc_mmap_threshold).
MALLOC_MMAP_THRESHOLD = 128 * 1024
_M_MMAP_THRESHOLD = -3  # mallopt's parameter number, from glibc's malloc.h


def pin_malloc_mmap_threshold() -> bool:
    """glibc raises its mmap threshold to the size of each mmapped block freed (up to 32 MB), so
    once the first multi-MB buffer is freed, later ones (the plan's shuffle crosses gRPC in
    MB-sized messages, ~10 copies at once, ~5 KB an image) are carved out of the worker threads'
    arenas, which keep the freed space: 66-71 MB of free heap at the peak on 5,984 images
    against 33 MB on 598 (two threads). Pinned, blocks over 128 KB are mmapped and returned
    on free, for every thread (the setting is process-wide). Returns whether it was set: only
    glibc has mallopt's parameter; elsewhere (musl, macOS, Windows) nothing is done.
    docs/engine.md, "Memory"."""
    import ctypes
    import os

    try:
        glibc = os.confstr("CS_GNU_LIBC_VERSION")  # "glibc 2.36"; None or an error elsewhere
    except (AttributeError, ValueError, OSError):
        glibc = None
    if not glibc:
        return False
    return bool(ctypes.CDLL(None).mallopt(_M_MMAP_THRESHOLD, MALLOC_MMAP_THRESHOLD))


def main(argv: Optional[Sequence[str]] = None) -> int:
    pin_malloc_mmap_threshold()  # before the runner's threads and buffers exist
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger().setLevel(logging.INFO)  # Beam installs a root handler before us
    logging.getLogger("apache_beam").setLevel(logging.WARNING)  # keep our progress lines readable
    try:
        run(argv if argv is not None else sys.argv[1:])
    except InputError as e:
        print(f"{ERROR_PREFIX}{e}", file=sys.stderr)
        return EXIT_INPUT
    except EmptyDataset as e:  # the diagnosis beside the summary; the error itself, one line
        diagnosis = str(e).splitlines()
        print("\n".join(diagnosis[1:]), flush=True)
        print(f"{ERROR_PREFIX}{diagnosis[0]} (diagnosis above; --allow_empty accepts it)",
              file=sys.stderr)
        return EXIT_EMPTY
    return 0


def skip_final_collection() -> None:
    """At exit the interpreter would garbage-collect every object Beam, gRPC and protobuf made:
    0.5-0.7 s after the manifest is written, measured. Every output is closed by now (the
    manifest last), so the objects are frozen instead; exit still flushes stdout and runs atexit.
    Only the program itself does this, right before exiting."""
    gc.disable()
    gc.freeze()


if __name__ == "__main__":
    status = main()
    skip_final_collection()  # the process ends here; never in a caller of main() (tests)
    sys.exit(status)
