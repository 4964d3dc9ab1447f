"""Shard writing and the final step that makes a dataset visible: rejects, then the manifest.

Shards go to OUTPUT/.incomplete/ first, beside the spool files (beam_jobs.spool) they are made
from. Only Finalize moves them into place, deletes the rest of .incomplete/ and writes
manifest.json, last, so a run killed midway leaves no manifest and no file that looks complete.
Records inside a shard are sorted by image id, so two runs write byte-identical files.
"""
from __future__ import annotations

import json
import logging
from typing import Optional, Sequence

import apache_beam as beam

from beam_jobs import spool, timeline
from beam_jobs import counters
from beam_jobs.config import PreprocessConfig
from isicflow import dataset, fileio, image_checks
from isicflow.dataset import MANIFEST_NAME, REJECTS_NAME
from isicflow.fileio import join_path as join
from isicflow.metadata import LesionRecord, Rejection

INCOMPLETE_DIR = ".incomplete"
# Flags that change how a run goes, never what it writes: kept out of the manifest's run_config.
RUN_ONLY_FLAGS = ("output", "overwrite", "profile_phases")


def spooled_record(record: LesionRecord, sha256: str, source_width: int,
                   source_height: int) -> bytes:
    """What WriteShard needs of an image besides its pixels, as ProcessImage spools it (JSON)."""
    return json.dumps({"record": record.to_json(), "sha256": sha256,
                       "source_width": source_width, "source_height": source_height},
                      sort_keys=True).encode("utf-8")


def read_spooled_record(data: bytes) -> tuple[LesionRecord, dict]:
    """spooled_record's bytes -> (the record, {"sha256", "source_width", "source_height"})."""
    fields = json.loads(data)
    return LesionRecord.from_json(fields.pop("record")), fields


class WriteShard(beam.DoFn):
    """One shard: ((size, split, index, count), [transforms.ImageKey.shard_item, in image-id
    order]), each image's record and pixels read back from the spool a bounded batch at a time
    (spool.read_each)."""

    def __init__(self, config: PreprocessConfig):
        self.config = config
        self.spool_dir = join(config.output, INCOMPLETE_DIR, spool.SPOOL_DIR)

    def process(self, element):
        (size, split, index, count), items = element
        rel = dataset.shard_path(size, split, index, count, self.config.tf_compression)
        nbytes, sha = dataset.write_shard(
            join(self.config.output, INCOMPLETE_DIR, rel),
            self._examples(items, size, split), self.config.tf_compression)
        counters.count("shards_written")
        counters.count("records_written", len(items))
        timeline.record_now(timeline.SHARD_WRITTEN_MS)
        yield {"size": size, "split": split, "path": rel, "records": len(items),
               "bytes": nbytes, "sha256": sha}

    def _refs(self, item: tuple) -> tuple[spool.SpoolRef, spool.SpoolRef]:
        name, record_offset, record_length, offset, length = item
        path = join(self.spool_dir, name)
        return spool.SpoolRef(path, record_offset, record_length), spool.SpoolRef(path, offset,
                                                                                  length)

    def _examples(self, items, size: int, split: str):
        batch = spool.read_batch_bytes(self.spool_dir)
        for record_bytes, encoded in spool.read_each((self._refs(item) for item in items), batch):
            record, image = read_spooled_record(record_bytes)
            yield dataset.to_example(record, encoded, size=size, split=split,
                                     image_format=self.config.image_format,
                                     content_sha256=image["sha256"],
                                     original_height=image["source_height"],
                                     original_width=image["source_width"])


# kept_entry's fields but the split, in its order: what kept_summary keeps of a record.
KEPT_FIELDS = tuple(k for k in dataset.kept_entry(LesionRecord("id", "path"), "") if k != "split")


def kept_summary(record: LesionRecord) -> str:
    """What the manifest counts of an image but its split (dataset.kept_entry's values), as
    compact JSON: few distinct values in a dataset, so the plan can count them."""
    entry = dataset.kept_entry(record, "")
    return json.dumps([entry[k] for k in KEPT_FIELDS], separators=(",", ":"))


def parse_kept_summary(summary: str) -> dict:
    """kept_summary's JSON back to its fields (dataset.kept_entry's, split left out)."""
    return dict(zip(KEPT_FIELDS, json.loads(summary)))


def kept_entries(kept) -> list[dict]:
    """The plan's kept counts (((split, kept_summary), count), ...) as the manifest's kept_entry
    list: one dict per image written, equal entries one shared dict (a few per dataset)."""
    out: list = []
    for (split, summary), n in kept:
        out += [{"split": split, **parse_kept_summary(summary)}] * n
    return out


def build_manifest(config: PreprocessConfig, layout: str, shards: list[dict],
                   rejections: list[Rejection], kept: list[dict], inputs_read: int,
                   layout_counters: dict, layout_info: Optional[dict] = None,
                   near_duplicate_groups: Sequence[Sequence[str]] = ()) -> dict:
    """Pure: the engine's manifest (isicflow.dataset.build_manifest) for this run's config.

    near_duplicate_groups: the sorted groups of image ids plan_dataset found perceptually
    near-identical (with --near_duplicates=drop, all but each group's first were dropped).
    """
    run_config = {k: v for k, v in config.to_json_dict().items() if k not in RUN_ONLY_FLAGS}
    near_duplicates = {"max_distance": {"coarse_bits": image_checks.COARSE_MAX_DISTANCE,
                                        "fine_bits": image_checks.FINE_MAX_DISTANCE},
                       "groups": [list(g) for g in sorted(near_duplicate_groups)]}
    return dataset.build_manifest(
        layout=layout, image_sizes=config.image_sizes, image_format=config.image_format,
        resize_mode=config.resize_mode, compression=config.tf_compression,
        synthetic=config.synthetic, run_config=run_config, shards=shards, rejections=rejections,
        kept=kept, inputs_read=inputs_read, layout_counters=layout_counters,
        layout_info=layout_info, near_duplicates=near_duplicates)


def finalize(_, config: PreprocessConfig, layout: str, inputs_read: int, layout_counters: dict,
             shards: list[dict], rejections: list[Rejection], kept: tuple,
             layout_info: Optional[dict] = None, near_duplicate_groups: tuple = ()) -> dict:
    """Moves shards into place, writes the tfds metadata (isicflow.dataset), rejects.jsonl, then
    manifest.json; returns the manifest."""
    manifest = build_manifest(config, layout, shards, list(rejections), kept_entries(kept),
                              inputs_read, layout_counters, layout_info, near_duplicate_groups)
    for shard in shards:
        source, final = join(config.output, INCOMPLETE_DIR, shard["path"]), join(config.output,
                                                                                 shard["path"])
        if not fileio.exists(source) and fileio.exists(final):
            continue  # moved by an earlier attempt of this step (runners retry failed bundles)
        fileio.rename(source, final)
    fileio.delete_tree(join(config.output, INCOMPLETE_DIR))
    dataset.write_tfds_metadata(config.output, manifest)  # derived from the manifest, before it
    fileio.write_bytes(join(config.output, REJECTS_NAME), dataset.rejects_bytes(rejections))
    fileio.write_bytes(join(config.output, MANIFEST_NAME), dataset.manifest_bytes(manifest))
    timeline.record_now(timeline.MANIFEST_WRITTEN_MS)
    logging.info("wrote %s", join(config.output, MANIFEST_NAME))
    return manifest
