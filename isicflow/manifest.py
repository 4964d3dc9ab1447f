"""Transitional: the trainers' old import path of the dataset contract, now isicflow.dataset
(and join_path, now isicflow.fileio). Delete once trainer/ imports those modules directly."""
from isicflow.dataset import (MANIFEST_NAME, REJECTS_NAME, SPLITS,  # noqa: F401
                              compression_type, read_manifest, shard_paths, split_info)
from isicflow.fileio import join_path  # noqa: F401
