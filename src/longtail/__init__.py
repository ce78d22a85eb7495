"""Unsupervised discovery of long-tail object categories in instance segmentation."""

from pathlib import Path

__version__ = "0.1.0"

#: Repository root (the package is installed editable from ``src/``).
REPO_ROOT = Path(__file__).resolve().parents[2]
