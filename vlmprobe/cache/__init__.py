"""The embedding cache: one HDF5 file per (model, dataset), its schema (:mod:`.schema`, the one
place it is written down), where caches live (:mod:`.paths`), the crash-safe chunk files
extraction assembles a cache from (:mod:`.chunks`), and the ``vlmprobe cache`` tools
(:mod:`.tools`)."""
from .paths import CACHE_ENV, cache_dir, cache_path, find_caches, stage_dir, stage_inputs
from .schema import (SCHEMA_VERSION, Cache, cache_key, describe_fingerprint_difference, read_cache,
                     read_cache_key, write_cache)

__all__ = ["CACHE_ENV", "Cache", "SCHEMA_VERSION", "cache_dir", "cache_key", "cache_path",
           "describe_fingerprint_difference", "find_caches", "read_cache", "read_cache_key",
           "stage_dir", "stage_inputs", "write_cache"]
