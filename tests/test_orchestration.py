"""Snakemake and DVC describe the same pipeline: same commands, inputs and outputs for every stage."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
LOG_REDIRECT = re.compile(r"\s+2>\s*\S+\s*$")


def snakemake_jobs(*targets: str) -> dict[str, dict]:
    """Every job of `snakemake --forceall -n -p`: {command: {rule, inputs, outputs}}."""
    env = {**os.environ, "LONGTAIL_MLFLOW": "0", "PATH": f"{BIN}:{os.environ['PATH']}"}
    out = subprocess.run([str(BIN / "snakemake"), "--forceall", "-n", "-p", "-c1", *targets], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    jobs: dict[str, dict] = {}
    for block in re.split(r"\n(?=\[[^\]]+\]\n(?:local)?rule )", out.stdout):
        m = re.search(r"(?:local)?rule (\S+):", block)
        if not m or m.group(1) == "all":
            continue
        field = lambda name: [s.strip() for s in (re.search(rf"\n\s+{name}: (.*)", block) or [None, ""])[1]
                              .split(",") if s.strip()]
        cmd = re.search(r"Shell command: (.*)", block)
        assert cmd, f"rule {m.group(1)} has no shell command (rules only call the longtail CLI)"
        command = LOG_REDIRECT.sub("", cmd.group(1).strip())
        jobs[command] = {"rule": m.group(1), "inputs": set(field("input")), "outputs": set(field("output"))}
    return jobs


def dvc_stages() -> dict[str, dict]:
    from dvc.dependency.param import ParamsDependency
    from dvc.repo import Repo

    stages = {}
    with Repo(str(REPO)) as repo:
        for st in repo.index.stages:
            if not st.cmd:
                continue  # data.dvc
            deps = {str(d.def_path) for d in st.deps if not isinstance(d, ParamsDependency)}
            params = {k for d in st.deps if isinstance(d, ParamsDependency) for k in d.params}
            stages[st.cmd] = {"name": st.addressing, "deps": deps, "outs": {str(o.def_path) for o in st.outs},
                              "params": params}
    return stages


@pytest.fixture(scope="module")
def both():
    return snakemake_jobs("all"), dvc_stages()


def test_same_commands(both):
    smk, dvc = both
    assert set(smk) == set(dvc), (f"only in Snakemake: {sorted(set(smk) - set(dvc))}\n"
                                 f"only in dvc.yaml: {sorted(set(dvc) - set(smk))}")


def test_same_inputs_and_outputs(both):
    smk, dvc = both
    for cmd, job in smk.items():
        st = dvc[cmd]
        deps = {d for d in st["deps"] if not d.startswith(("src/", "workflow/mmdet"))}
        covers = lambda dep, inp: inp == dep or inp.startswith(dep.rstrip("/") + "/")
        # every Snakemake input is a DVC dep (or inside a dep directory) and every DVC dep covers an input
        uncovered = {i for i in job["inputs"] if not any(covers(d, i) for d in deps)}
        unused = {d for d in deps if not any(covers(d, i) for i in job["inputs"])}
        assert not uncovered and not unused, (f"{job['rule']} / {st['name']}: inputs only in Snakemake "
                                              f"{sorted(uncovered)}, deps only in dvc.yaml {sorted(unused)}")
        assert job["outputs"] == st["outs"], f"{job['rule']} / {st['name']}: outputs differ"


def test_every_dvc_stage_tracks_code_and_params(both):
    _, dvc = both
    for cmd, st in dvc.items():
        assert any(d.startswith("src/longtail") for d in st["deps"]), f"{st['name']} does not depend on its code"
        assert st["params"], f"{st['name']} declares no params"


def test_cli_parser_imports_neither_torch_nor_sklearn():
    """`longtail <verb>` builds the parser of every stage before running one verb: that must not import torch or
    scikit-learn (~4 s of CPU at each job start; `make run` starts 52 jobs, most of which need neither)."""
    code = ("import sys; from longtail.cli import build_parser; build_parser(); "
            "print(sorted(m for m in ('torch', 'sklearn', 'mmdet', 'mmengine', 'mlflow') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stdout + out.stderr[-2000:]


def rule_reads() -> dict[str, set[str] | None]:
    """``params: reads=config_keys(...)`` of every rule of rules/*.smk (None: the rule declares none)."""
    import ast

    out: dict[str, set[str] | None] = {}
    for f in sorted((REPO / "rules").glob("*.smk")):
        for name, body in re.findall(r"^rule (\w+):\n(.*?)(?=^\S|\Z)", f.read_text(), re.M | re.S):
            m = re.search(r"reads=config_keys\(([^)]*)\)", body)
            out[name] = set(ast.literal_eval(f"({m.group(1)},)")) if m else None
    return out


def test_rule_params_are_the_dvc_stage_params(both):
    """A rule's `params` (Snakemake's rerun trigger) = the config keys of its dvc.yaml stage, and every key names
    a real config entry; no rule carries an unused config copy."""
    import yaml

    smk, dvc = both
    reads = rule_reads()
    assert all(keys for keys in reads.values()), f"rules without reads=config_keys(...): " \
                                                 f"{sorted(r for r, k in reads.items() if not k)}"
    for cmd, job in smk.items():
        assert reads[job["rule"]] == dvc[cmd]["params"], (f"{job['rule']}: params {sorted(reads[job['rule']])} "
                                                          f"vs dvc.yaml {dvc[cmd]['name']} {sorted(dvc[cmd]['params'])}")
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    for rule, keys in reads.items():
        for key in keys:
            node = params
            for part in key.split("."):
                assert isinstance(node, dict) and part in node, f"rule {rule}: {key} is not a key of params.yaml"
                node = node[part]
    text = "".join(f.read_text() for f in (REPO / "rules").glob("*.smk"))
    assert "section=" not in text and "results/proposals" not in text and "results/embedding" not in text


@pytest.mark.slow
def test_configfile_overlay_reaches_the_cli(tmp_path):
    """`snakemake --configfile experiment.yaml` changes what the `longtail` jobs compute (via $LONGTAIL_CONFIG)."""
    import json

    exp = tmp_path / "exp.yaml"
    exp.write_text("data:\n  base_categories: [person, dog]\n")
    (tmp_path / "params.yaml").symlink_to(REPO / "params.yaml")  # `configfile: params.yaml` is cwd-relative
    (tmp_path / "data").symlink_to(REPO / "data")
    env = {**os.environ, "LONGTAIL_MLFLOW": "0", "PATH": f"{BIN}:{os.environ['PATH']}"}
    env.pop("LONGTAIL_CONFIG", None)
    r = subprocess.run([str(BIN / "snakemake"), "-s", str(REPO / "Snakefile"), "-d", str(tmp_path), "-c1",
                        "results/data/metrics.json", "--configfile", str(exp)], env=env, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    m = json.loads((tmp_path / "results/data/metrics.json").read_text())
    assert m["num_base_categories"] == 2 and m["num_novel_categories"] == 78


def _dry_run_experiment(profile: str, target: str, experiment: str, *extra: str) -> tuple[str, dict]:
    """`snakemake -n --forceall` of ``target`` with an experiment file (+ ``extra`` options, each one argument such
    as ``--set-scatter=hierarchy=2``): (output, job counts per rule)."""
    env = {**os.environ, "LONGTAIL_MLFLOW": "0", "PATH": f"{BIN}:{os.environ['PATH']}"}
    r = subprocess.run([str(BIN / "snakemake"), "-n", "--forceall", "--profile", f"workflow/profiles/{profile}", *extra,
                        target, "--configfile", f"workflow/experiments/{experiment}"], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=300)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-3000:]
    return out, dict(re.findall(r"^(\w+)\s+(\d+)$", out, re.M))


def test_coco_lvis_experiment_plans_on_slurm():
    """The paper at scale: the experiment file + SLURM profile give the full grid with GPU requests."""
    import yaml

    out, counts = _dry_run_experiment("slurm", "all", "coco_lvis.yaml")
    assert counts["train_embedding"] == "11" and counts["train_proposals"] == "3"
    n = yaml.safe_load((REPO / "workflow/experiments/coco_lvis.yaml").read_text())["proposals"]["shards"]
    assert n > 1      # every proposal set made by n shard jobs + one gather
    assert counts["propose"] == str(6 * n) and counts["propose_solov2_free"] == str(n)
    assert int(counts["gather_proposals"]) * n == sum(int(counts[r]) for r in counts if r.startswith("propose"))
    block = out[out.index("rule train_proposals:"):]
    import yaml

    gpus = yaml.safe_load((REPO / "workflow/profiles/slurm/config.yaml").read_text())["set-resources"][
        "train_proposals"]["gpu"]   # the profile's GPUs per training job (one node)
    assert gpus >= 1 and f"gpu={gpus}" in block[:block.index("Shell command")]
    if gpus > 1:   # one process per GPU
        assert f"torchrun --standalone --nproc_per_node {gpus} --no-python longtail train-proposals" in block


def test_ucm_two_scales_experiment_plans_both_tree_families():
    """Edge variant hed_x2 -> its own trees, sharded as the main trees (N shard jobs + a gather per stage) -> pooled
    into propose ucm, with the overrides on the command line."""
    out, counts = _dry_run_experiment("local", "results/proposals/ucm/metrics_val.json", "ucm_two_scales.yaml",
                                      "--set-scatter=hierarchy=2")
    assert counts["hierarchy_edges"] == "2" and counts["hierarchy_ucm"] == "2" and counts["propose_ucm"] == "1"
    assert counts["hierarchy_edges_variant"] == "2" and counts["hierarchy_ucm_variant"] == "2"
    assert counts["gather_hierarchy_edges_variant"] == "1" and counts["gather_hierarchy_ucm_variant"] == "1"
    for i in (1, 2):
        assert (f"longtail edges --source results/data/val.json --out-dir results/hierarchy/variants/hed_x2/edges/val "
                f"--shard {i}-of-2 --set 'hierarchy.edges.scales=[2.0]'") in out
        assert (f"longtail ucm --edges results/hierarchy/variants/hed_x2/edges/val/index.json "
                f"--out-dir results/hierarchy/variants/hed_x2/ucm/val --shard {i}-of-2") in out
    # propose ucm takes the gathered variant trees
    block = out[out.index("rule propose_ucm:"):]
    assert "results/hierarchy/variants/hed_x2/ucm/val/index.json" in block[:block.index("Shell command")]


def test_ucm_multiscale_experiment_plans_multiscale_trees():
    """The issue-6 best-method override passes the params schema and plans edges -> ucm -> propose ucm."""
    _, counts = _dry_run_experiment("local", "results/proposals/ucm/metrics_val.json", "ucm_multiscale.yaml")
    assert counts["hierarchy_edges"] == "1" and counts["hierarchy_ucm"] == "1" and counts["propose_ucm"] == "1"


def test_pseudo_ucm_experiment_trains_on_ucm_proposals_of_the_train_images():
    """proposals.train.pseudo.method: ucm -> ucm trees and proposals on train, passed to train-proposals as --pseudo."""
    out, counts = _dry_run_experiment("local", "results/proposals/maskrcnn/metrics_val.json", "pseudo_ucm.yaml")
    assert counts["train_proposals"] == "1" and counts["propose_ucm"] == "1" and counts["hierarchy_ucm"] == "1"
    block = out[out.index("rule train_proposals:"):]
    assert "results/proposals/ucm/train/index.json" in block[:block.index("rule ", 10)]
    assert ("longtail propose --method ucm --dataset results/data/train.json --out-dir results/proposals/ucm/train"
            in out)


def test_set_scatter_plans_shard_jobs_and_a_gather():
    """`--set-scatter proposals=2`: 2 propose jobs (--shard 1-of-2, 2-of-2) + 1 gather per proposal set."""
    env = {**os.environ, "LONGTAIL_MLFLOW": "0", "PATH": f"{BIN}:{os.environ['PATH']}"}
    r = subprocess.run([str(BIN / "snakemake"), "-n", "-p", "--forceall", "-c1", "--set-scatter", "proposals=2", "--",
                        "results/proposals/gt/val/index.json", "results/proposals/ucm/val/index.json"], cwd=REPO,
                       env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    counts = dict(re.findall(r"^(\w+)\s+(\d+)$", r.stdout, re.M))
    assert counts["propose_gt"] == "2" and counts["propose_ucm"] == "2" and counts["gather_proposals"] == "2"
    for method in ("gt", "ucm"):
        for i in (1, 2):
            assert (f"--out-dir results/proposals/{method}/val --shard {i}-of-2" in r.stdout), method
        assert f"longtail gather-proposals --proposals results/proposals/{method}/val" in r.stdout
