"""Sharded proposal sets (issue 15): `propose --shard i/N` + `gather-proposals` = the unsharded set, per-image
reads by offset, and the bad inputs of the sharded path (truncated shard, missing shard, missing/corrupt image)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from longtail.cli import main
from longtail.common import LongtailError
from longtail.common.shards import parse_shard, select_shard
from longtail.proposals.format import (gather, iter_proposals, read_image_proposals, read_index, read_proposals,
                                       shard_path)

BIN = Path(sys.executable).parent
ENV = {**os.environ, "LONGTAIL_MLFLOW": "0"}


def _propose(dataset: Path, out: Path, *extra: str, method: str = "gt") -> int:
    return main(["propose", "--method", method, "--dataset", str(dataset), "--out-dir", str(out), *extra])


@pytest.fixture(scope="module")
def sets(prepared, tmp_path_factory):
    """gt proposals of the sample val split: unsharded (1/1) and as 2 shards + gather."""
    root = tmp_path_factory.mktemp("sets")
    val = prepared / "val.json"
    assert _propose(val, root / "one") == 0
    for i in (1, 2):
        assert _propose(val, root / "two", "--shard", f"{i}/2") == 0
        assert not (root / "two" / "index.json").exists()          # complete only once gathered
    assert main(["gather-proposals", "--proposals", str(root / "two")]) == 0
    return val, root / "one", root / "two"


def test_parse_and_select_shard():
    assert parse_shard("2/4") == parse_shard("2-of-4") == (2, 4) and parse_shard(None) == (1, 1)
    for bad in ("0/2", "3/2", "x", "1/0"):
        with pytest.raises(LongtailError, match="--shard"):
            parse_shard(bad)
    items = [{"id": i} for i in (9, 3, 7, 1, 5)]
    parts = [select_shard(items, (i, 2), key=lambda x: x["id"]) for i in (1, 2)]
    assert [[x["id"] for x in p] for p in parts] == [[1, 5, 9], [3, 7]]


def test_sharded_equals_unsharded(sets):
    val, one, two = sets
    i1, r1 = read_proposals(one)
    i2, r2 = read_proposals(two)
    assert r1 == r2 and len(r1) > 1000
    assert i1["num_shards"] == 1 and i2["num_shards"] == 2 and i1["num_proposals"] == i2["num_proposals"]
    assert [im["id"] for im in i1["images"]] == [im["id"] for im in i2["images"]]
    ids = sorted(im["id"] for im in json.loads(val.read_text())["images"])
    assert [im["id"] for im in i2["images"]] == ids
    # shard i holds sorted ids [i-1::2], one JSON line per image
    for i in (1, 2):
        lines = shard_path(two, (i, 2)).read_text().splitlines()
        assert [json.loads(line)["image_id"] for line in lines] == ids[i - 1::2]
    per_image = {e["id"]: recs for e, recs in iter_proposals(one)}
    for e, recs in iter_proposals(two):
        assert recs == per_image[e["id"]] and e["num_proposals"] == len(recs)
        assert [r["score"] for r in recs] == sorted((r["score"] for r in recs), reverse=True)


def test_finished_shard_is_not_recomputed(sets, caplog):
    val, _, two = sets
    shard = shard_path(two, (1, 2))
    before = shard.stat().st_mtime_ns
    with caplog.at_level("INFO"):
        assert _propose(val, two, "--shard", "1/2") == 0
    assert "not recomputed" in caplog.text and shard.stat().st_mtime_ns == before
    assert (two / "index.json").exists()


def test_eval_proposals_same_ar_on_sharded_set(sets, tmp_path):
    val, one, two = sets
    for name, d in (("one", one), ("two", two / "index.json")):       # the folder or its index.json
        assert main(["eval-proposals", "--proposals", str(d), "--dataset", str(val), "--out",
                     str(tmp_path / f"{name}.json")]) == 0
    a, b = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("one", "two"))
    assert a["segm"] == b["segm"] and a["bbox"] == b["bbox"]
    assert a["segm"]["all"]["AR100"] > 0.9                           # oracle proposals


def test_reader_seeks_to_one_image(sets, tmp_path):
    """read_image_proposals reads only its image's line: every other line corrupted, it still returns the
    records; iterating over the set names the file and the first corrupted line."""
    _, one, _ = sets
    index = read_index(one)
    target = index["images"][5]
    want = read_image_proposals(one, target["id"], index)
    assert want and all(r["image_id"] == target["id"] for r in want)
    d = tmp_path / "c"
    (d / "shards").mkdir(parents=True)
    (d / "index.json").write_text((one / "index.json").read_text())
    (d / "shards" / "1-of-1.json").write_text((one / "shards" / "1-of-1.json").read_text())
    lines = (one / "shards" / "1-of-1.jsonl").read_bytes().splitlines(keepends=True)
    bad = [ln if k == 5 else b"#" * (len(ln) - 1) + b"\n" for k, ln in enumerate(lines)]
    (d / "shards" / "1-of-1.jsonl").write_bytes(b"".join(bad))
    assert read_image_proposals(d, target["id"]) == want
    # the reader keeps 28 bytes an image (no record, no parsed index) and reads any image in any order
    from longtail.proposals.format import ProposalReader

    with ProposalReader(one) as reader:
        assert sum(a.nbytes for a in (reader.image_ids, reader._shard, reader._offset, reader._length)) == \
            28 * len(index["images"]) and "index" not in vars(reader)
        per_image = dict((e["id"], recs) for e, recs in iter_proposals(one, index))
        for im in reversed(index["images"]):
            assert reader.read(im["id"]) == per_image[im["id"]]
        with pytest.raises(LongtailError, match="not in this proposal set"):
            reader.read(-1)
    with pytest.raises(LongtailError, match=r"1-of-1\.jsonl: line 1 is not JSON"):
        next(iter_proposals(d))


def test_truncated_shard_is_named(sets, tmp_path):
    _, _, two = sets
    d = tmp_path / "t"
    (d / "shards").mkdir(parents=True)
    for f in (two / "shards").iterdir():
        (d / "shards" / f.name).write_bytes(f.read_bytes())
    p = d / "shards" / "2-of-2.jsonl"
    data = p.read_bytes()
    cut = data.index(b"\n", len(data) // 2) + 10                    # inside a line after the middle
    p.write_bytes(data[:cut])
    k = data[:cut].count(b"\n") + 1
    with pytest.raises(LongtailError, match=rf"2-of-2\.jsonl: .*truncated at line {k}; delete it and rerun"):
        gather(d)
    # read through an index gathered before the cut: the same file and line
    (d / "index.json").write_text((two / "index.json").read_text())
    with pytest.raises(LongtailError, match=rf"2-of-2\.jsonl: truncated at line {k}"):
        read_proposals(d)


def test_gather_names_the_missing_shard(sets, tmp_path, capsys):
    val, _, _ = sets
    out = tmp_path / "m"
    assert _propose(val, out, "--shard", "1/3") == 0
    assert main(["gather-proposals", "--proposals", str(out), "--shards", "3"]) == 2
    err = capsys.readouterr().err
    assert "2-of-3.jsonl" in err and "shard 2 of 3 missing" in err and "--shard 2/3" in err
    assert not (out / "index.json").exists()
    # resharded: the shards of another N go, the gather finds the one N
    assert _propose(val, out, "--shard", "1/1") == 0
    assert sorted(f.name for f in (out / "shards").iterdir()) == ["1-of-1.json", "1-of-1.jsonl"]
    assert read_index(out)["num_shards"] == 1


@pytest.mark.slow
@pytest.mark.parametrize("defect", ["missing", "corrupt"])
def test_bad_image_in_the_middle_of_a_shard(prepared, tmp_path, pixel_embedding_ckpt, capsys, defect):
    """freemask reads the images: a missing or corrupt third image of the shard stops it with an error naming the
    shard and the file; the two finished images stay in the .part and the rerun (image fixed) resumes after them."""
    d = json.loads((prepared / "val.json").read_text())
    from longtail.common.params import project_root

    ims = sorted(d["images"], key=lambda im: im["id"])[:4]
    bad = ims[2]
    src = project_root() / bad["file_name"]
    copy = tmp_path / "img" / Path(bad["file_name"]).name
    copy.parent.mkdir()
    if defect == "corrupt":
        copy.write_bytes(src.read_bytes()[:200])                     # a JPEG cut after its header
    images = [dict(im, file_name=str(copy)) if im is bad else im for im in ims]
    ds = tmp_path / "val.json"
    ds.write_text(json.dumps({**d, "images": images,
                              "annotations": [a for a in d["annotations"] if a["image_id"] in {i["id"] for i in ims}]}))
    out = tmp_path / "freemask" / "val"
    sets = ["--set", f"annotation_free.backbone.checkpoint={pixel_embedding_ckpt}"]
    assert _propose(ds, out, "--shard", "1/1", *sets, method="freemask") == 2
    err = capsys.readouterr().err
    assert "shard 1-of-1" in err and str(copy) in err and "rerun the shard" in err
    part = out / "shards" / "1-of-1.jsonl.part"
    assert part.exists() and not shard_path(out, (1, 1)).exists() and not (out / "index.json").exists()
    assert [json.loads(x)["image_id"] for x in part.read_text().splitlines()] == [ims[0]["id"], ims[1]["id"]]
    copy.write_bytes(src.read_bytes())                                # fixed
    assert _propose(ds, out, "--shard", "1/1", *sets, method="freemask") == 0
    index, _ = read_proposals(out)
    assert [im["id"] for im in index["images"]] == [im["id"] for im in ims] and not part.exists()


def test_sigkill_during_sharded_propose_leaves_no_shard_and_resumes(prepared, tmp_path):
    """propose --shard 2/2 killed while appending: no shard file, no index; the rerun resumes after the last
    complete image (a line cut by the kill is rewritten) and the shard equals an uninterrupted one, byte for byte."""
    d = json.loads((prepared / "val.json").read_text())
    # a larger set (the val images 20 times, new ids) so that the kill lands mid-shard
    images, anns = [], []
    for rep in range(20):
        images += [dict(im, id=rep * 1_000_000 + im["id"]) for im in d["images"]]
        anns += [dict(a, id=rep * 10_000_000 + a["id"], image_id=rep * 1_000_000 + a["image_id"])
                 for a in d["annotations"]]
    ds = tmp_path / "big.json"
    ds.write_text(json.dumps({**d, "images": images, "annotations": anns}))
    ref, out = tmp_path / "ref", tmp_path / "k"
    assert _propose(ds, ref, "--shard", "2/2") == 0
    cmd = [str(BIN / "longtail"), "propose", "--method", "gt", "--dataset", str(ds), "--out-dir", str(out),
           "--shard", "2/2"]
    part = out / "shards" / "2-of-2.jsonl.part"
    p = subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.time() + 300
    while (not part.exists() or part.stat().st_size < 100_000) and p.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    assert p.poll() is None, "propose finished before it could be killed"
    os.killpg(p.pid, signal.SIGKILL)
    p.wait()
    assert part.exists() and not shard_path(out, (2, 2)).exists() and not (out / "index.json").exists()
    done = part.read_bytes().count(b"\n")
    assert 0 < done < len(images) // 2
    r = subprocess.run(cmd, env=ENV, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"resuming shard 2-of-2 after {done} finished images" in r.stderr
    assert shard_path(out, (2, 2)).read_bytes() == shard_path(ref, (2, 2)).read_bytes()
    meta = lambda root: json.loads(shard_path(root, (2, 2)).with_suffix(".json").read_text())
    assert {k: v for k, v in meta(out).items() if k != "dataset"} == {k: v for k, v in meta(ref).items()
                                                                       if k != "dataset"}
    assert not list((out / "shards").glob("*.part*"))


@pytest.mark.slow
def test_hierarchy_shards_equal_unsharded(tmp_path, capsys):
    """edges / ucm --shard i/2 + gather-hierarchy = the unsharded folders (batch_size 1: the same forward passes);
    a finished shard is not recomputed; gather names a missing shard."""
    import numpy as np

    src = "data/bsds500/images/val"
    sets = ["--set", "hierarchy.edges.max_images=3", "--set", "hierarchy.edges.batch_size=1"]
    m = str(tmp_path / "m.json")
    assert main(["edges", "--source", src, "--out-dir", str(tmp_path / "e1"), "--metrics", m, *sets]) == 0
    for i in (1, 2):
        assert main(["edges", "--source", src, "--out-dir", str(tmp_path / "e2"), "--metrics", m, "--shard",
                     f"{i}/2", *sets]) == 0
    assert not (tmp_path / "e2" / "index.json").exists()
    assert main(["gather-hierarchy", "--dir", str(tmp_path / "e2")]) == 0
    assert main(["ucm", "--edges", str(tmp_path / "e1"), "--out-dir", str(tmp_path / "u1"), "--metrics", m]) == 0
    assert main(["ucm", "--edges", str(tmp_path / "e2"), "--out-dir", str(tmp_path / "u2"), "--metrics", m,
                 "--shard", "2-of-2"]) == 0
    assert main(["gather-hierarchy", "--dir", str(tmp_path / "u2"), "--shards", "2"]) == 2
    assert "1-of-2/index.json" in capsys.readouterr().err
    assert main(["ucm", "--edges", str(tmp_path / "e2"), "--out-dir", str(tmp_path / "u2"), "--metrics", m,
                 "--shard", "1/2"]) == 0
    before = (tmp_path / "u2" / "shards" / "1-of-2" / "index.json").stat().st_mtime_ns
    assert main(["ucm", "--edges", str(tmp_path / "e2"), "--out-dir", str(tmp_path / "u2"), "--metrics", m,
                 "--shard", "1/2"]) == 0
    assert (tmp_path / "u2" / "shards" / "1-of-2" / "index.json").stat().st_mtime_ns == before      # not recomputed
    assert main(["gather-hierarchy", "--dir", str(tmp_path / "u2")]) == 0
    for a, b, col in (("e1", "e2", "edges"), ("u1", "u2", "tree")):
        ia, ib = (json.loads((tmp_path / d / "index.json").read_text())["images"] for d in (a, b))
        assert [r["key"] for r in ia] == [r["key"] for r in ib] and len(ia) == 3
        s1 = json.loads((tmp_path / b / "shards" / "1-of-2" / "index.json").read_text())["images"]
        assert [r["key"] for r in s1] == [r["key"] for r in ia][0::2]
        for r, rb in zip(ia, ib):
            assert rb[col] == f"shards/{1 + ia.index(r) % 2}-of-2/{r['key']}.npz" and r["digest"] == rb["digest"]
            za, zb = np.load(tmp_path / a / r[col]), np.load(tmp_path / b / rb[col])
            assert sorted(za.files) == sorted(zb.files)
            for k in za.files:
                np.testing.assert_array_equal(za[k], zb[k])


def _edges_cmd(out: Path, *extra: str) -> list[str]:
    return [str(BIN / "longtail"), "edges", "--source", "data/bsds500/images/val", "--out-dir", str(out),
            "--set", "hierarchy.edges.max_images=4", "--set", "hierarchy.edges.batch_size=1", *extra]


@pytest.mark.slow
def test_sigkill_during_sharded_edges_leaves_no_shard_and_resumes(tmp_path, repo_root):
    """edges --shard 1/1 killed after its first images: no shard folder, no index; the rerun resumes after the
    finished images (only the rest computed) and equals an uninterrupted run; a file cut in the .part folder is
    recomputed, not read."""
    import numpy as np

    from longtail.hierarchy import shards as hshards

    ref, out = tmp_path / "ref", tmp_path / "k"
    assert main(_edges_cmd(ref, "--shard", "1/1")[1:]) == 0
    part = out / "shards" / ".1-of-1.part"
    p = subprocess.Popen(_edges_cmd(out, "--shard", "1/1"), env=ENV, cwd=repo_root, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.time() + 300
    entries = part / "entries.jsonl"
    while (not entries.exists() or entries.read_bytes().count(b"\n") < 1) and p.poll() is None \
            and time.time() < deadline:
        time.sleep(0.01)
    assert p.poll() is None, "edges finished before it could be killed"
    os.killpg(p.pid, signal.SIGKILL)
    p.wait()
    assert not hshards.finished(out, (1, 1)) and not (out / "index.json").exists()
    done = entries.read_bytes().count(b"\n")
    assert 1 <= done < 4
    r = subprocess.run(_edges_cmd(out, "--shard", "1/1"), env=ENV, cwd=repo_root, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"resuming shard 1-of-1 after {done} finished images" in r.stderr
    assert not part.exists() and hshards.finished(out, (1, 1))
    a, b = (hshards.gather(d)["images"] for d in (ref, out))
    assert [(x["key"], x["digest"]) for x in a] == [(x["key"], x["digest"]) for x in b] and len(a) == 4
    z = np.load(out / b[0]["edges"])
    np.testing.assert_array_equal(z["edges"], np.load(ref / a[0]["edges"])["edges"])


# --- embed --shard i/N + gather-embeddings ------------------------------------------------------------------

@pytest.fixture(scope="module")
def embed_inputs(params, train_coco, tmp_path_factory):
    """Jittered GT proposals of 5 sample images and a small (random) embedding model.pt."""
    import torch

    from longtail.embedding.train import build_model
    from longtail.proposals.format import write_proposals
    from test_embedding import jittered_proposals, small_cfg

    root = tmp_path_factory.mktemp("embed_shards")
    recs, images = jittered_proposals(train_coco, 5)
    props = write_proposals(root / "val", recs, images, method="gt-jitter", dataset="val.json", topk=100,
                            nms_iou=1.0)
    cfg = small_cfg(params, crop_size=16, hidden=[16, 8], proposals_per_image=6)
    torch.manual_seed(0)
    model = build_model(cfg)
    torch.save({"model": model.state_dict(), "config": cfg, "space": cfg["space"],
                "curvature": float(cfg["curvature"]), "dim": int(cfg["dim"])}, root / "model.pt")
    return root / "model.pt", props / "index.json"


def _embed(model, props, out, *extra, verb="embed"):
    return main([verb, "--model", str(model), "--proposals", str(props), "--out", str(out),
                 "--set", "embedding.embed_chunk_images=2", "--set", "embedding.anchors_per_category=1", *extra])


def test_embed_shards_equal_unsharded(embed_inputs, prepared, tmp_path, capsys, caplog):
    """embed --shard i/2 + gather-embeddings = one unsharded embed (proposals and anchors); a finished shard is
    not recomputed; gather names a missing shard, a truncated shard file and a shard of another model."""
    import numpy as np

    from longtail.embedding.embed import shard_file

    model, props = embed_inputs
    anchors = ["--anchors", str(prepared / "train.json")]
    one, two = tmp_path / "one" / "embeddings.npz", tmp_path / "two" / "embeddings.npz"
    assert _embed(model, props, one, *anchors, "--metrics", str(tmp_path / "m1.json")) == 0
    assert _embed(model, props, two, "--shard", "2/2") == 0
    gather = lambda out, *x: _embed(model, props, out, *anchors, "--metrics", str(tmp_path / "m2.json"), *x,
                                    verb="gather-embeddings")
    assert gather(two) == 2
    assert "shard 1 of 2 missing" in capsys.readouterr().err and not two.exists()
    assert _embed(model, props, two, "--shard", "1-of-2") == 0
    before = shard_file(two, (1, 2)).stat().st_mtime_ns
    with caplog.at_level("INFO"):
        assert _embed(model, props, two, "--shard", "1/2") == 0
    assert "not recomputed" in caplog.text and shard_file(two, (1, 2)).stat().st_mtime_ns == before
    assert gather(two) == 0
    with np.load(one) as a, np.load(two) as b:
        assert sorted(a.files) == sorted(b.files)
        assert len(a["proposal_ids"]) > 20 and len(a["anchor_embeddings"]) > 10
        for k in a.files:
            if a[k].dtype.kind == "f":
                np.testing.assert_allclose(a[k], b[k], rtol=0, atol=1e-5, err_msg=k)
            else:
                np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    m1, m2 = (json.loads((tmp_path / f"m{i}.json").read_text()) for i in (1, 2))
    assert {k: v for k, v in m1.items() if k != "embed_seconds"} == \
        {k: v for k, v in m2.items() if k != "embed_seconds"}
    # each shard holds its images: sorted ids [i-1::2]
    ids = sorted(int(im["id"]) for im in json.loads(props.read_text())["images"])
    for i in (1, 2):
        with np.load(shard_file(two, (i, 2))) as z:
            assert set(z["proposal_image_ids"].tolist()) <= set(ids[i - 1::2])
    # a truncated shard file (a copy cut short): the error names the file
    bad = tmp_path / "bad" / "embeddings.npz"
    shard_file(bad, (1, 2)).parent.mkdir(parents=True)
    for i in (1, 2):
        data = shard_file(two, (i, 2)).read_bytes()
        shard_file(bad, (i, 2)).write_bytes(data if i == 1 else data[:len(data) // 2])
    assert gather(bad) == 2
    err = capsys.readouterr().err
    assert f"{shard_file(bad, (2, 2))}: truncated or corrupt embedding shard" in err and not bad.exists()
    # a shard of another model: named, not mixed in
    other = tmp_path / "other.pt"
    import torch

    state = torch.load(model, weights_only=False)
    state["model"] = {k: v + 0.01 if v.is_floating_point() else v for k, v in state["model"].items()}
    torch.save(state, other)
    assert _embed(other, props, two, "--shard", "2/2") == 0          # recomputed (other fingerprint)
    assert gather(two) == 2                                         # gathered with the first model
    assert f"{shard_file(two, (2, 2))}: embedded with another model" in capsys.readouterr().err
