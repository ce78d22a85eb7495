"""HED port, OWT-UCM region trees, the edges/ucm/bsds verbs, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from longtail.cli import main
from longtail.common.errors import LongtailError
from longtail.hierarchy import bench, load_region_tree, region_trees
from longtail.hierarchy.tree import RegionTree

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "data" / "bsds500" / "bench_sample"


@pytest.fixture(scope="module")
def hed():
    from longtail.hierarchy.hed import load_hed

    return load_hed(channels_last=True)


@pytest.fixture(scope="module")
def edges_2018(hed):
    from longtail.hierarchy.hed import hed_edges
    from longtail.hierarchy.images import load_rgb

    return hed_edges(hed, [load_rgb(SAMPLE / "images" / "2018.jpg")])[0]


@pytest.fixture(scope="module")
def tree_2018(edges_2018):
    from longtail.hierarchy.ucm import owt_ucm

    return owt_ucm(edges_2018.astype(np.float64))


def test_keras_weights_port(hed):
    import h5py

    from longtail.hierarchy.hed import bundled_weights_path

    with h5py.File(bundled_weights_path()) as f:
        k = np.asarray(f["block3/layers/conv2d_1/vars/0"])   # (kh, kw, in, out)
        fuse = np.asarray(f["fuse/vars/0"])
    w = hed.blocks[2][1].weight.detach().numpy()             # (out, in, kh, kw)
    np.testing.assert_array_equal(w[7, 3], k[:, :, 3, 7])
    np.testing.assert_array_equal(hed.fuse.weight.detach().numpy().ravel(), fuse.ravel())


def test_hed_edges_score_on_bsds(edges_2018, tree_2018):
    """The ported HED (and its UCM) must detect the human boundaries: a wrong port (RGB/BGR, pooling,
    upsampling, transposed kernels) drops ODS far below these bounds."""
    from longtail.hierarchy.ucm import edge_nms

    e = edges_2018
    assert e.shape == (481, 321) and e.dtype == np.float32 and 0 <= e.min() and e.max() <= 1
    gt = bench.load_groundtruth(SAMPLE / "groundTruth" / "2018.mat")
    th = bench.thresholds(5)
    nms = bench.collect_boundary([bench.boundary_counts(edge_nms(e), gt, th)], th)
    ucm = bench.collect_boundary([bench.boundary_counts(tree_2018.ucm2()[2::2, 2::2], gt, th)], th)
    assert nms["ODS"] > 0.76, nms["ODS"]     # measured 0.80 (19 thresholds: 0.81)
    assert ucm["ODS"] > 0.76, ucm["ODS"]     # measured 0.80


def test_tree_cut_is_the_bsds_ucm_segmentation(tree_2018):
    from sklearn.metrics import adjusted_rand_score

    t = tree_2018
    u = t.ucm2()
    assert u.shape == (2 * 481 + 1, 2 * 321 + 1)
    assert t.n_leaves > 200 and t.n_nodes == 2 * t.n_leaves - 1        # binary tree over watershed regions
    assert np.all(t.altitudes[t.parents] >= t.altitudes)                 # altitudes increase to the root
    for level in (0.05, 0.2, 0.5):
        mine = t.cut(level)
        ref = bench.segs_from_ucm2(u, [level])[0]
        assert mine.max() + 1 == ref.max()
        assert adjusted_rand_score(mine.ravel(), ref.ravel()) == pytest.approx(1.0)
    assert t.cut(-1).max() + 1 == t.n_leaves and t.cut(2.0).max() == 0
    assert t.cut_regions(25).max() + 1 <= 25


def test_capped_tree_keeps_the_hierarchy_above_the_cap(tree_2018):
    from longtail.hierarchy.ucm import rebuild

    t = tree_2018
    c = rebuild(t, t.cut_regions(40))
    assert c.n_leaves <= 40 and c.n_nodes == 2 * c.n_leaves - 1
    u, uc = t.ucm2(), c.ucm2()
    on = uc > 0
    np.testing.assert_allclose(uc[on], u[on])                       # same contour strengths
    assert (u[~on] <= c.altitudes[c.n_leaves:].min() + 1e-12).all()  # only contours below the cap vanished
    d = c.leaf_distances()
    assert np.allclose(d, d.T) and np.all(np.diag(d) == 0)
    # ultrametric: d(a, c) <= max(d(a, b), d(b, c))
    assert np.all(d[:, None, :] <= np.maximum(d[:, :, None], d[None, :, :]) + 1e-12)
    pairs = c.parent_child_pairs()
    assert len(pairs) == c.n_nodes - 1 and np.all(pairs[:, 0] > pairs[:, 1])
    area = c.areas()
    assert area[c.root] == 481 * 321
    assert c.node_mask(c.root).all()


def _small_images(tmp: Path) -> Path:
    """A folder of awkward but valid images: grayscale and RGBA crops of a BSDS image."""
    from PIL import Image

    im = Image.open(SAMPLE / "images" / "3063.jpg")
    d = tmp / "imgs"
    d.mkdir()
    im.crop((100, 60, 196, 140)).convert("L").save(d / "gray.png")
    im.crop((150, 80, 230, 176)).convert("RGBA").save(d / "rgba.png")
    return d


def test_edges_and_ucm_verbs(tmp_path):
    d = _small_images(tmp_path)
    assert main(["edges", "--source", str(d), "--out-dir", str(tmp_path / "edges"),
                 "--metrics", str(tmp_path / "me.json")]) == 0
    idx = json.loads((tmp_path / "edges" / "index.json").read_text())
    assert [r["key"] for r in idx["images"]] == ["gray", "rgba"]
    with np.load(tmp_path / "edges" / "gray.npz") as z:
        assert z["edges"].shape == (80, 96) and z["orientation"].shape == (80, 96)
        assert z["thin"].max() > 0.3 and (z["thin"] > 0).mean() < (z["edges"] > 0.05).mean()
    assert json.loads((tmp_path / "me.json").read_text())["n_images"] == 2
    fig = tmp_path / "figures" / "h.png"
    assert main(["ucm", "--edges", str(tmp_path / "edges"), "--out-dir", str(tmp_path / "ucm"),
                 "--metrics", str(tmp_path / "mu.json"), "--figure", str(fig), "--set",
                 "hierarchy.ucm.max_leaves=40"]) == 0
    trees = region_trees(tmp_path / "ucm")
    t = load_region_tree(trees["rgba"])
    assert isinstance(t, RegionTree) and t.shape == (96, 80) and 2 <= t.n_leaves <= 40
    with np.load(trees["gray"]) as z:
        assert z["ucm2"].shape == (161, 193)
    assert fig.stat().st_size > 10_000
    assert not list((tmp_path).glob(".ucm*"))  # no temp dirs left behind


def test_bad_images_are_named(tmp_path, capsys):
    from PIL import Image

    from longtail.hierarchy.images import load_rgb

    d = tmp_path / "bad"
    d.mkdir()
    Image.new("RGB", (20, 100)).save(d / "tiny.png")
    args = ["edges", "--source", str(d), "--out-dir", str(tmp_path / "e"), "--metrics", str(tmp_path / "m.json")]
    assert main(args) == 2
    assert "tiny.png is 20x100 px, under the minimum of 32" in capsys.readouterr().err
    (d / "tiny.png").unlink()
    (d / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    assert main(args) == 2
    assert "broken.jpg is unreadable" in capsys.readouterr().err
    assert not (tmp_path / "e").exists()  # nothing half-written
    with pytest.raises(LongtailError, match="missing.png not found"):
        load_rgb(d / "missing.png")
    args[2] = str(tmp_path / "none.json")
    assert main(args) == 2
    assert "none.json not found" in capsys.readouterr().err


def test_bsds_verb_and_missing_groundtruth(tmp_path, capsys):
    imgs = tmp_path / "images"
    imgs.mkdir()
    (imgs / "3063.jpg").write_bytes((SAMPLE / "images" / "3063.jpg").read_bytes())
    out = tmp_path / "bsds.json"
    assert main(["bsds", "--images", str(imgs), "--gt", str(SAMPLE / "groundTruth"), "--reference-ucm",
                 str(SAMPLE / "ucm2"), "--out", str(out), "--set", "hierarchy.bench.thresholds=5",
                 "--set", "hierarchy.bench.rows=[ucm]"]) == 0
    r = json.loads(out.read_text())
    assert set(r["rows"]) == {"ucm", "gpb_owt_ucm"} and r["n_images"] == 1
    assert r["rows"]["ucm"]["boundary"]["ODS"] > 0.7
    assert 0 < r["rows"]["ucm"]["region"]["covering_ODS"] <= 1
    (imgs / "9999.jpg").write_bytes((SAMPLE / "images" / "2018.jpg").read_bytes())
    assert main(["bsds", "--images", str(imgs), "--gt", str(SAMPLE / "groundTruth"), "--out", str(out)]) == 2
    assert "groundTruth/9999.mat is missing" in capsys.readouterr().err


def test_channels_last_forward_equals_nchw(hed):
    """The fast path (channels-last model and input, inference mode) gives the edges of the plain NCHW forward
    pass of the same weights on a real BSDS image (< 1e-4), also at several scales."""
    import copy

    import torch
    import torch.nn.functional as F

    from longtail.hierarchy.hed import hed_edges, preprocess
    from longtail.hierarchy.images import load_rgb

    assert hed.blocks[1][0].weight.is_contiguous(memory_format=torch.channels_last)
    nchw = copy.deepcopy(hed).to(memory_format=torch.contiguous_format)
    assert nchw.blocks[1][0].weight.is_contiguous()
    im = load_rgb(SAMPLE / "images" / "2018.jpg")
    x = preprocess(im)[None].contiguous()
    with torch.no_grad():
        ref = nchw(x)[0].numpy()
        ref_half = F.interpolate(nchw(F.interpolate(x, scale_factor=0.5, mode="bilinear", align_corners=False))[:, None],
                                 size=x.shape[-2:], mode="bilinear", align_corners=False)[0, 0].numpy()
    fast = hed_edges(hed, [im])[0]
    assert np.abs(fast - ref).max() < 1e-4
    assert ref.max() > 0.9 and (ref > 0.5).mean() > 0.01   # real edges, not an all-zero map
    ms = hed_edges(hed, [im], scales=(0.5, 1.0))[0]
    assert np.abs(ms - (ref + ref_half) / 2).max() < 1e-4
    assert np.abs(ms - ref).max() > 0.05                    # the scales really are averaged


def test_mix_boundary_frontier_strength(edges_2018):
    """``boundary: mix``: leaves merge by 0.35 x mean thinned HED + 0.65 x mean raw HED along their frontier
    (recomputed here from the leaf labels); weight 1 is the ``nms`` tree; the UCM still scores on BSDS."""
    from longtail.hierarchy.ucm import edge_nms, owt_ucm

    e = edges_2018.astype(np.float64)
    thin = edge_nms(e).astype(np.float64)
    mix = owt_ucm(e, boundary="mix", mix_weight=0.35, thin=thin)
    np.testing.assert_array_equal(owt_ucm(e, boundary="mix", mix_weight=1.0, thin=thin).ucm2(),
                                  owt_ucm(e, boundary="nms", thin=thin).ucm2())
    # frontier means between adjacent leaves, from the pixels (4-adjacency)
    lab = mix.leaf_labels
    sums = {}
    for a, b, ta, tb, ea, eb in ((lab[:, :-1], lab[:, 1:], thin[:, :-1], thin[:, 1:], e[:, :-1], e[:, 1:]),
                                 (lab[:-1], lab[1:], thin[:-1], thin[1:], e[:-1], e[1:])):
        m = a != b
        lo, hi = np.minimum(a[m], b[m]), np.maximum(a[m], b[m])
        for key, t, r in zip(zip(lo.tolist(), hi.tolist()), np.maximum(ta[m], tb[m]), (ea[m] + eb[m]) / 2):
            s = sums.setdefault(key, [0.0, 0.0, 0])
            s[0] += t
            s[1] += r
            s[2] += 1
    strength = {k: 0.35 * s[0] / s[2] + 0.65 * s[1] / s[2] for k, s in sums.items()}
    first = mix.altitudes[mix.n_leaves]                      # the first merge: the weakest frontier
    assert first == pytest.approx(min(strength.values()), abs=1e-9)
    # ... between the two leaves with the weakest frontier
    kids = np.flatnonzero(mix.parents[:mix.n_leaves] == mix.n_leaves)
    assert tuple(sorted(kids.tolist())) == min(strength, key=strength.get)
    gt = bench.load_groundtruth(SAMPLE / "groundTruth" / "2018.mat")
    th = bench.thresholds(5)
    r = bench.collect_boundary([bench.boundary_counts(mix.ucm2()[2::2, 2::2], gt, th)], th)
    assert r["ODS"] > 0.76, r["ODS"]
    with pytest.raises(ValueError):
        owt_ucm(e, boundary="mix", mix_weight=1.5, thin=thin)
