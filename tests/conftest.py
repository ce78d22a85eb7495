"""Shared fixtures. Tests run on the real sample in data/ (`make test` pulls it with DVC first)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Tests never write to the repo's MLflow store unless they point MLFLOW_TRACKING_URI somewhere themselves.
os.environ.setdefault("LONGTAIL_MLFLOW", "0")


def pytest_configure(config):
    if not (REPO / "data" / "coco-mini").exists():
        raise pytest.UsageError("data/ is missing: run `make data` (dvc pull) before the tests")


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def params():
    from longtail.common.params import load_params

    return load_params(REPO / "params.yaml")


@pytest.fixture(scope="session")
def prepared(tmp_path_factory, params) -> Path:
    """`longtail prepare` on the real sample, into a session tmp dir: returns the folder."""
    from longtail.cli import main

    out = tmp_path_factory.mktemp("data") / "prepared"
    assert main(["prepare", "--out-dir", str(out)]) == 0
    return out


@pytest.fixture(scope="session")
def val_coco(prepared) -> dict:
    return json.loads((prepared / "val.json").read_text())


@pytest.fixture(scope="session")
def train_coco(prepared) -> dict:
    return json.loads((prepared / "train.json").read_text())


def copy_tree(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


@pytest.fixture(scope="session")
def pixel_embedding_ckpt(tmp_path_factory):
    """A checkpoint in `longtail train-pixel-embedding`'s format (seeded random weights)."""
    import torch

    from longtail.hierarchy.pixel_embedding import PixelEmbeddingNet

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("pe") / "pixel_embedding.pt"
    torch.save({"config": {"dim": 32, "proj": 256}, "state_dict": PixelEmbeddingNet().state_dict()}, path)
    return path
