"""`longtail report` over real discovery outputs (GT-mask proposals of the prepared val set)."""

import base64
import json
import re

import pytest
import test_discovery_eval as T

from longtail.cli import main


@pytest.fixture(autouse=True)
def _setup(monkeypatch, prepared):
    T.VAL = prepared / "val.json"
    monkeypatch.setenv("LONGTAIL_MLFLOW", "0")


def test_report_tables_figures_and_gallery(tmp_path, monkeypatch):
    gt, props, recs, cats = T.gt_proposals(tmp_path, n_images=40)
    res = tmp_path / "results"
    # proposals + embeddings + discovery in the pipeline layout
    pdir = res / "proposals" / "gt" / "val"
    pdir.parent.mkdir(parents=True)
    props.rename(pdir)
    metrics = {}
    for space in ("poincare", "euclidean"):
        out, m, _k = T.run_cli(tmp_path, gt, pdir, recs, cats, space)
        emb_src = tmp_path / "emb" / space / "embeddings.npz"
        (res / "embedding" / "gt" / space).mkdir(parents=True)
        emb_src.rename(res / "embedding" / "gt" / space / "embeddings.npz")
        (res / "discovery" / "gt").mkdir(parents=True, exist_ok=True)
        out.rename(res / "discovery" / "gt" / space)
        metrics[space] = m
    # a figure of another stage
    (res / "hierarchy" / "figures").mkdir(parents=True)
    png = base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg==")
    (res / "hierarchy" / "figures" / "ucm_example.png").write_bytes(png)

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
    # embedded PNGs: elbow + 2 scatters + gallery + the other stage's figure, each a valid PNG
    imgs = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(imgs) == 5
    assert all(base64.b64decode(i)[:8] == b"\x89PNG\r\n\x1a\n" for i in imgs)
    assert png in [base64.b64decode(i) for i in imgs]
    assert page.count("→") == 4   # 4 gallery clusters, all matched to a category with planted embeddings
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["runs"] == 2 and summary["main_run"] == "gt/poincare"
    assert summary["main_purity"] == pytest.approx(metrics["poincare"]["purity"]["purity"])


def test_report_without_results_is_a_clear_error(tmp_path):
    assert main(["report", "--discovery-dir", str(tmp_path / "nothing"), "--gt", str(T.VAL),
                 "--out-dir", str(tmp_path / "r")]) == 2


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
