"""Extraction: a model and a dataset in, one HDF5 cache of embeddings out (resumable, sharded)."""
from .batches import auto_batch_size, encode
from .engine import ExtractConfig, ExtractResult, extract
from .shards import merge_shards, parse_shard

__all__ = ["ExtractConfig", "ExtractResult", "auto_batch_size", "encode", "extract", "merge_shards", "parse_shard"]
