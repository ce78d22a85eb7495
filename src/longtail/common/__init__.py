"""Shared utilities: errors, atomic I/O, params and schema, MLflow tracking."""

from longtail.common.errors import LongtailError
from longtail.common.io import atomic_dir, atomic_path, read_json, write_json

__all__ = ["LongtailError", "atomic_dir", "atomic_path", "read_json", "write_json"]
