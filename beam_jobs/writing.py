"""Shard writing and the final step that makes a dataset visible: rejects, then the manifest.

Shards go to OUTPUT/.incomplete/ first, beside the spool files (beam_jobs.spool) they are made
from. Only Finalize moves them into place, deletes the rest of .incomplete/ and writes
manifest.json, last, so a run killed midway leaves no manifest and no file that looks complete.
Records inside a shard are sorted by image id, so two runs write byte-identical files.
"""
from __future__ import annotations

import logging
from typing import Optional, Sequence

import apache_beam as beam
from apache_beam.metrics import Metrics

from beam_jobs import spool, timeline
from beam_jobs.config import PreprocessConfig
from isicflow import dataset, fileio, image_checks
from isicflow.dataset import MANIFEST_NAME, REJECTS_NAME
from isicflow.fileio import join_path as join
from isicflow.metadata import Rejection

INCOMPLETE_DIR = ".incomplete"
# Flags that change how a run goes, never what it writes: kept out of the manifest's run_config.
RUN_ONLY_FLAGS = ("output", "overwrite", "profile_phases")


class WriteShard(beam.DoFn):
    """One shard: ((size, split, index, count), [ProcessedImage]), written in id order with each
    image's pixels read back from its spool file."""

    def __init__(self, config: PreprocessConfig):
        self.config = config

    def process(self, element):
        (size, split, index, count), images = element
        images = sorted(images, key=lambda im: im.record.image_id)
        rel = dataset.shard_path(size, split, index, count, self.config.tf_compression)
        encoded = spool.read_all([image.encoded[size] for image in images])
        nbytes, sha = dataset.write_shard(
            join(self.config.output, INCOMPLETE_DIR, rel),
            (dataset.to_example(image.record, encoded[image.encoded[size]], size=size, split=split,
                                image_format=self.config.image_format,
                                content_sha256=image.sha256, original_height=image.source_height,
                                original_width=image.source_width) for image in images),
            self.config.tf_compression)
        Metrics.counter("isicflow", "shards_written").inc()
        Metrics.counter("isicflow", "records_written").inc(len(images))
        timeline.record_now(timeline.SHARD_WRITTEN_MS)
        yield {"size": size, "split": split, "path": rel, "records": len(images),
               "bytes": nbytes, "sha256": sha}


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
    manifest = build_manifest(config, layout, shards, list(rejections), list(kept),
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
