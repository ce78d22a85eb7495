"""`longtail report` over real discovery outputs (GT-mask proposals of the prepared val set)."""

import base64
import html
import io
import json
import re

import numpy as np

import pytest
import test_discovery_eval as T

from longtail.cli import main


@pytest.fixture(autouse=True)
def _setup(monkeypatch, prepared):
    T.VAL = prepared / "val.json"
    monkeypatch.setenv("LONGTAIL_MLFLOW", "0")


def _figures(monkeypatch) -> list:
    """Record every matplotlib Figure the report renders (the figures module's one PNG writer)."""
    from longtail.report import figures as F

    seen, png = [], F._png

    def keep(fig):
        seen.append(fig)
        return png(fig)

    monkeypatch.setattr(F, "_png", keep)
    return seen


def _table(page: str, caption: str) -> list[list[str]]:
    """The cells of the page's table whose caption starts with ``caption``, one list per body row."""
    t = re.search(r"<table><caption>" + re.escape(caption) + r".*?</table>", page, re.S).group(0)
    return [re.findall(r"<td>(.*?)</td>", row) for row in re.findall(r"<tr>(.*?)</tr>", t)[1:]]


def test_report_tables_figures_and_gallery(tmp_path, monkeypatch):
    from PIL import Image

    lv = json.loads(T.LVIS.read_text())
    both = sorted({im["id"] for im in lv["images"]} & {im["id"] for im in json.loads(T.VAL.read_text())["images"]})
    gt, props, recs, cats = T.gt_proposals(tmp_path, n_images=40, extra_ids=both)
    # the 3 largest categories get no anchor: their clusters stay novel (the gallery shows matched and novel ones)
    present, counts = np.unique(cats, return_counts=True)
    unanchored = set(present[np.argsort(-counts, kind="stable")[:3]].tolist())
    anchored = [int(c) for c in present if c not in unanchored]
    res = tmp_path / "results"
    # proposals + embeddings + discovery in the pipeline layout
    pdir = res / "proposals" / "gt" / "val"
    pdir.parent.mkdir(parents=True)
    props.rename(pdir)
    metrics, Z = {}, {}
    for space in ("poincare", "euclidean"):
        # LVIS numbers (discovery.lvis_json: APr/c/f of the LVIS API) for the Poincaré run only
        extra = ["--set", f"discovery.lvis_json={T.LVIS}"] if space == "poincare" else []
        out, m, _k = T.run_cli(tmp_path, gt, pdir, recs, cats, space, extra=extra, anchor_cats=anchored)
        emb_src = tmp_path / "emb" / space / "embeddings.npz"
        with np.load(emb_src) as f:
            Z[space] = f["proposal_embeddings"].astype(np.float64)
        (res / "embedding" / "gt" / space).mkdir(parents=True)
        emb_src.rename(res / "embedding" / "gt" / space / "embeddings.npz")
        (res / "discovery" / "gt").mkdir(parents=True, exist_ok=True)
        out.rename(res / "discovery" / "gt" / space)
        metrics[space] = m
    assert metrics["poincare"]["clusters_novel"] == 3 and metrics["poincare"]["lvis"]["detections"] > 0
    assert "lvis" not in metrics["euclidean"]
    # a figure of another stage
    (res / "hierarchy" / "figures").mkdir(parents=True)
    png = base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg==")
    (res / "hierarchy" / "figures" / "ucm_example.png").write_bytes(png)

    figs = _figures(monkeypatch)
    out = res / "report"
    assert main(["report", "--discovery-dir", str(res / "discovery"), "--embedding-dir", str(res / "embedding"),
                 "--proposals-dir", str(res / "proposals"), "--gt", str(T.VAL), "--results-dir", str(res),
                 "--out-dir", str(out), "--set", "report.gallery_clusters=4",
                 "--set", "report.gallery_per_cluster=3"]) == 0
    page = (out / "index.html").read_text()
    for caption in ("Table 1", "Table 2", "Table 3", "Poincaré vs Euclidean", "Elbow method",
                    "coloured by GT category", "Discovered clusters", "Figures from other stages"):
        assert caption in page, caption
    # Table 3 per k (as the paper): one row per k of the elbow grid, k* marked
    assert "Table 3 (per k)" in page and page.count("(elbow)</td>") == 1
    assert page.count("<td>k=") == len(metrics["poincare"]["purity_by_k"]) - 1
    # the numbers in the tables are the metrics files' numbers
    assert page.count(f"<td>{metrics['poincare']['novel']['AP']:.3f}</td>") >= 2
    assert f"<td>{metrics['euclidean']['baseline_random']['purity']:.3f}</td>" in page
    # Table 1's LVIS columns: APr/c/f of the LVIS API for the run evaluated with discovery.lvis_json, "—" without
    t1 = {(r[0], r[1]): r for r in _table(page, "Table 1")}
    assert set(t1) == {("gt", "poincare"), ("gt", "euclidean")}
    lvis = metrics["poincare"]["lvis"]
    fmt = lambda v: "—" if v is None else f"{v:.3f}"  # noqa: E731
    assert t1["gt", "poincare"][5:8] == [fmt(lvis["APr"]), fmt(lvis["APc"]), fmt(lvis["APf"])]
    assert any(lvis[k] is not None for k in ("APr", "APc", "APf"))
    assert t1["gt", "euclidean"][5:8] == ["—"] * 3
    assert t1["gt", "poincare"][2] == f"{metrics['poincare']['novel']['AP']:.3f}"
    # embedded PNGs: elbow + 2 scatters + gallery + the other stage's figure, each a valid PNG
    imgs = [base64.b64decode(i) for i in re.findall(r'src="data:image/png;base64,([^"]+)"', page)]
    assert len(imgs) == 5 and png in imgs
    sizes = [Image.open(io.BytesIO(i)).size for i in imgs if i != png]
    assert len(sizes) == 4 and all(w >= 300 and h >= 250 for w, h in sizes), sizes

    # the figures behind them: elbow, Poincaré scatter, Euclidean scatter, gallery
    assert len(figs) == 4
    elbow, *scatters, gal = figs
    ax, = elbow.axes
    lines = {ln.get_label(): ln for ln in ax.get_lines()}
    assert set(lines) == {"gt/poincare", "gt/euclidean"}
    for space in ("poincare", "euclidean"):
        e = json.loads((res / "discovery" / "gt" / space / "elbow.json").read_text())
        np.testing.assert_allclose(lines[f"gt/{space}"].get_xdata(), e["k"])
        np.testing.assert_allclose(lines[f"gt/{space}"].get_ydata(), e["explained_variation"])
    for space, fig in zip(("poincare", "euclidean"), scatters):
        ax, = fig.axes
        assert ax.get_title().startswith(f"gt/{space} ({space}")
        offs = [c.get_offsets() for c in ax.collections]
        stars = [o for c, o in zip(ax.collections, offs) if c.get_sizes()[0] == 60]
        pts = np.concatenate([o for c, o in zip(ax.collections, offs) if c.get_sizes()[0] != 60])
        # every proposal embedding drawn once, where it is (2-d: shown as is)
        assert len(pts) == len(recs) == len(Z[space])
        np.testing.assert_allclose(pts[np.lexsort(pts.T)], Z[space][np.lexsort(Z[space].T)], rtol=1e-6)
        # the GT anchors of the coloured categories as stars, 3 per anchored category
        with np.load(res / "embedding" / "gt" / space / "embeddings.npz") as f:
            A = f["anchor_embeddings"].astype(np.float64)
        stars = np.concatenate(stars)
        assert len(stars) and len(stars) % 3 == 0
        assert all(np.abs(A - s).max(1).min() < 1e-6 for s in stars)
    # gallery: 4 clusters x 3 tiles; 2 matched (largest labelled) + 2 novel (largest unlabelled), titles = the list
    assert len(gal.axes) == 4 * 3
    titles = [gal.axes[3 * r].get_title(loc="left") for r in range(4)]
    assert re.findall(r"<li>(.*?)</li>", page) == [html.escape(t) for t in titles]
    with np.load(res / "discovery" / "gt" / "poincare" / "clusters.npz") as f:
        labels = f["labels"]
    cl_label = np.array(json.loads((res / "discovery" / "gt" / "poincare" / "cluster_labels.json").read_text())
                        ["labels"])
    sizes = np.bincount(labels, minlength=len(cl_label))
    names = {c["id"]: c["name"] for c in gt["categories"]}
    shown = [int(re.match(r"cluster (\d+)", t).group(1)) for t in titles]
    assert [cl_label[c] != -1 for c in shown] == [True, True, False, False]
    for c, t in zip(shown, titles):
        if cl_label[c] == -1:
            assert t == f"cluster {c}: novel (n={sizes[c]})"
            assert cats[labels == c][0] in unanchored        # a planted cluster of a category without anchors
        else:
            assert t == f"cluster {c} → {names[int(cl_label[c])]} (n={sizes[c]})"
        # the largest of its kind first
        kind = (cl_label == -1) == (cl_label[c] == -1)
        assert sizes[c] >= max(sizes[kind & ~np.isin(np.arange(len(sizes)), shown)], default=0)
        # min(3, cluster size) mask tiles in its row
        tiles = sum(1 for a in gal.axes[3 * shown.index(c):3 * shown.index(c) + 3] if a.images)
        assert tiles == min(3, sizes[c])
    assert page.count("→") == 2 and page.count(": novel (n=") == 2
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["runs"] == 2 and summary["main_run"] == "gt/poincare"
    assert summary["main_purity"] == pytest.approx(metrics["poincare"]["purity"]["purity"])


def test_report_errors_name_what_is_missing(tmp_path, capsys):
    assert main(["report", "--discovery-dir", str(tmp_path / "nothing"), "--gt", str(T.VAL),
                 "--out-dir", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "nothing") in err and "longtail cluster" in err and "longtail evaluate" in err
    assert not (tmp_path / "r" / "index.html").exists()
    # a discovery run, but the ground truth file is missing
    run = tmp_path / "disc" / "gt" / "poincare"
    run.mkdir(parents=True)
    (run / "metrics.json").write_text(json.dumps({"novel": {"AP": 0.5}}))
    assert main(["report", "--discovery-dir", str(tmp_path / "disc"), "--gt", str(tmp_path / "no_gt.json"),
                 "--out-dir", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "no_gt.json" in err and "ground truth" in err
    assert not (tmp_path / "r" / "index.html").exists()


def test_plane_view_of_a_ball_in_more_dimensions():
    """The scatter's 2-d view of d-dim Poincaré points: points lying in a plane of the ball keep their distance
    to the origin exactly (whatever the plane's orientation); 2-d points are shown unchanged."""
    import geoopt
    import numpy as np
    import torch

    from longtail.report.figures import plane_view

    rng = np.random.default_rng(0)
    flat = rng.uniform(-0.6, 0.6, size=(200, 2))
    Q, _ = np.linalg.qr(rng.normal(size=(8, 8)))
    Z = np.concatenate([flat, np.zeros((200, 6))], 1) @ Q.T      # the same points in a rotated plane of the 8-d ball
    ball = geoopt.PoincareBall(c=1.0)
    V = plane_view(Z, True, 1.0)
    assert V.shape == (200, 2)
    np.testing.assert_allclose(ball.dist0(torch.from_numpy(V)).numpy(), ball.dist0(torch.from_numpy(flat)).numpy(),
                               rtol=1e-9)
    assert plane_view(flat, True) is flat
