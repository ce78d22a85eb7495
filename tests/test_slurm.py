"""The SLURM profile on a real (single-node, localhost) SLURM, and `make install-profile`.

test_rules_run_under_slurm (slow, CI runs it): installs Debian's slurmd/slurmctld/slurm-client/munge if missing
(scripts/slurm_local.sh, root or passwordless sudo), starts them, runs `prepare` and a downstream rule of the
pipeline through workflow/profiles/slurm in a copy of the working tree (data/ symlinked, so results/ of the
repo are untouched), and checks that every job was an sbatch job that completed on the node, that its outputs
were written while that job ran, and that they are right; then stops the daemons it started.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SCRIPT = REPO / "scripts" / "slurm_local.sh"
PROFILE = REPO / "workflow" / "profiles" / "slurm"
SBIN = "/usr/sbin:/sbin"
SUBMITTED = re.compile(r"Job \d+ has been submitted with SLURM jobid (\d+) \(log: (\S+)\)\.")


def _check_prepare(root: Path) -> None:
    m = json.loads((root / "results/data/metrics.json").read_text())
    assert m["train"]["images"] == 180 and m["val"]["images"] == 177, m
    assert m["num_base_categories"] == 20 and m["num_novel_categories"] == 60, m
    val = json.loads((root / "results/data/val.json").read_text())
    assert len(val["images"]) == 177 and len(val["annotations"]) == m["val"]["instances"]
    train_base = json.loads((root / "results/data/train_base.json").read_text())
    assert len(train_base["annotations"]) == m["train"]["base_instances"]


def _check_propose_gt_val(root: Path) -> None:
    """Oracle proposals of val: every non-crowd GT mask once (top-K, mask NMS), for exactly the 177 val images."""
    val = json.loads((root / "results/data/val.json").read_text())
    d = root / "results/proposals/gt/val/shards"   # the one shard of the default proposals.shards = 1
    index = json.loads((d / "1-of-1.json").read_text())
    records = [r for line in (d / "1-of-1.jsonl").read_text().splitlines() for r in json.loads(line)["proposals"]]
    assert index["method"] == "gt" and index["num_proposals"] == len(records), {k: index[k] for k in index
                                                                                 if k != "images"}
    assert sorted(im["id"] for im in index["images"]) == sorted(im["id"] for im in val["images"])
    assert sum(im["num_proposals"] for im in index["images"]) == len(records)
    assert max(im["num_proposals"] for im in index["images"]) <= index["topk"]
    gt = {a["id"]: a for a in val["annotations"] if not a.get("iscrowd", 0)}
    ids = [r["gt_ann_id"] for r in records]
    assert len(set(ids)) == len(ids) and set(ids) <= set(gt)
    assert 0.95 * len(gt) <= len(records) <= len(gt), (len(records), len(gt))   # NMS drops near-duplicates only
    assert all(gt[r["gt_ann_id"]]["image_id"] == r["image_id"] and r["score"] == 1.0 for r in records)


# (rule, snakemake target, files the job writes, check of the outputs). The files' mtimes must fall inside the
# SLURM job's run time: they are the rule's log and files inside directory outputs, because the submitting
# snakemake touches the declared output files themselves when it sees the job finish.
# Downstream rules that run in seconds on the CPU sample, most preferred first: the first one the workflow
# defines runs after `prepare`.
PREPARE = ("prepare", "results/data/metrics.json", ["results/logs/prepare.log"], _check_prepare)
DOWNSTREAM = [
    ("propose_gt", "results/proposals/gt/val/shards/1-of-1.jsonl",
     ["results/logs/propose_gt_val_1-of-1.log"], _check_propose_gt_val),
]


def _env(root: Path, **extra: str) -> dict[str, str]:
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}:{SBIN}",
           "PYTHONPATH": str(root / "src"),   # the jobs import the copy's code (REPO_ROOT = the copy)
           "LONGTAIL_MLFLOW": "0", **extra}
    env.pop("XDG_CONFIG_HOME", None)
    return env


def _sh(*cmd: str, **kw) -> subprocess.CompletedProcess:
    kw.setdefault("env", {**os.environ, "PATH": f"{os.environ['PATH']}:{SBIN}"})
    return subprocess.run(list(cmd), capture_output=True, text=True, **kw)


def copy_worktree(dst: Path) -> Path:
    """Tracked + untracked-but-not-ignored files of the repo (what a clone + local edits hold); data/ linked."""
    out = _sh("git", "ls-files", "-z", "--cached", "--others", "--exclude-standard", cwd=REPO, timeout=60)
    assert out.returncode == 0, out.stderr
    for rel in sorted(set(filter(None, out.stdout.split("\0")))):
        src = REPO / rel
        if src.is_file() and not rel.startswith("data/"):
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / rel)
    (dst / "data").symlink_to(REPO / "data", target_is_directory=True)
    return dst


def scontrol_job(jobid: str) -> dict[str, str]:
    out = _sh("scontrol", "show", "job", "-o", jobid, timeout=30)
    assert out.returncode == 0, f"scontrol show job {jobid}: {out.stderr}"
    fields = {}
    for m in re.finditer(r"(\S+?)=(.*?)(?=\s+\S+?=|\s*$)", out.stdout.strip()):
        fields[m.group(1)] = m.group(2)
    return fields


def slurm_time(s: str) -> float:
    return dt.datetime.strptime(s, "%Y-%m-%dT%H:%M:%S").timestamp()   # scontrol prints local time


@pytest.fixture(scope="module")
def slurm():
    """A running single-node SLURM; the daemons this fixture started are stopped afterwards."""
    have = all(shutil.which(b, path=f"{os.environ['PATH']}:{SBIN}") for b in ("slurmd", "slurmctld", "sbatch",
                                                                                "munged"))
    root_ok = os.geteuid() == 0 or (shutil.which("sudo") is not None and _sh("sudo", "-n", "true").returncode == 0)
    can_apt = shutil.which("apt-get") is not None and root_ok
    if not have and not can_apt:
        msg = ("SLURM binaries (slurmd, slurmctld, sbatch, munged) are missing and apt-get cannot install them "
               "here (no apt-get, or neither root nor passwordless sudo)")
        if os.environ.get("LONGTAIL_REQUIRE_SLURM") == "1":
            pytest.fail(msg + "; LONGTAIL_REQUIRE_SLURM=1 forbids skipping")
        pytest.skip(msg)
    cmd = ["bash", str(SCRIPT), "start"]
    if os.geteuid() != 0:
        cmd = ["sudo", "-n", "--preserve-env=PATH", *cmd]
    out = _sh(*cmd, timeout=600)
    assert out.returncode == 0, f"scripts/slurm_local.sh start failed:\n{out.stdout}\n{out.stderr}"
    started = out.stdout.strip().splitlines()[-1].removeprefix("started:").split()
    try:
        yield started
    finally:
        stop = ["bash", str(SCRIPT), "stop", *started] if started else None
        if stop:
            if os.geteuid() != 0:
                stop = ["sudo", "-n", *stop]
            out = _sh(*stop, timeout=120)
            assert out.returncode == 0, out.stderr


def _node_limits() -> tuple[int, int]:
    out = _sh("sinfo", "-h", "-N", "-o", "%c %m", timeout=30)
    assert out.returncode == 0 and out.stdout.strip(), out.stderr
    cpus, mem = out.stdout.split()[:2]
    return int(cpus), int(mem.rstrip("+"))


def defined_rules(root: Path) -> set[str]:
    out = _sh(str(BIN / "snakemake"), "--list-rules", cwd=root, env=_env(root), timeout=120)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    return {line.split()[0] for line in out.stdout.splitlines() if line.strip() and not line.startswith(" ")}


@pytest.mark.slow
def test_rules_run_under_slurm(slurm, tmp_path):
    root = copy_worktree(tmp_path / "repo")
    rules = defined_rules(root)
    downstream = [c for c in DOWNSTREAM if c[0] in rules]
    assert downstream, (f"none of the downstream rules {[c[0] for c in DOWNSTREAM]} is defined "
                        f"(rules: {sorted(rules)})")
    runs = [PREPARE, downstream[0]]
    cpus, mem = _node_limits()
    # The profile as a user runs it, on a CPU-only node: no GPU, and requests capped at what the node has.
    overrides = [f"{r[0]}:{res}" for r in runs for res in ("gpu=0", f"mem_mb={min(mem, 4000)}")]
    targets = [r[1] for r in runs]
    cmd = [str(BIN / "snakemake"), "--profile", str(PROFILE), "--max-threads", str(cpus),
           "--slurm-init-seconds-before-status-checks", "2", "--latency-wait", "10",
           "--set-resources", *overrides, "--", *targets]
    out = subprocess.run(cmd, cwd=root, env=_env(root), capture_output=True, text=True, timeout=600)
    log = out.stdout + out.stderr
    assert out.returncode == 0, log[-6000:]

    submitted = {}   # rule -> (slurm job id, log file)
    for jobid, logfile in SUBMITTED.findall(log):
        rule = re.search(r"/rule_([^/]+)/", logfile).group(1)
        submitted[rule] = (jobid, Path(logfile))
    assert set(submitted) == {r[0] for r in runs}, log[-6000:]

    for rule, _, files, check in runs:
        jobid, logfile = submitted[rule]
        # snakemake's SLURM log of the job: the job-step snakemake ran this rule on the node and finished
        assert logfile.is_file() and logfile.is_relative_to(root / ".snakemake" / "slurm_logs"), logfile
        text = logfile.read_text()
        assert "--executor slurm-jobstep" in text and f"rule {rule}:" in text, text[-3000:]
        assert re.search(r"1 of 1 steps \(100%\) done", text), text[-3000:]
        # SLURM's own record of the job: completed, exit 0, on this copy, logging to that file
        job = scontrol_job(jobid)
        assert job["JobState"] == "COMPLETED" and job["ExitCode"] == "0:0", job
        comment = job["Comment"].strip()   # rule_<rule>[_wildcards_<values>]
        assert comment == f"rule_{rule}" or comment.startswith(f"rule_{rule}_wildcards_"), job
        assert Path(job["WorkDir"]).resolve() == root.resolve(), job
        assert Path(job["StdOut"]).resolve() == logfile.resolve(), job
        # the outputs were written while that SLURM job ran (scontrol times have 1 s resolution)
        start, end = slurm_time(job["StartTime"]), slurm_time(job["EndTime"])
        for f in files:
            mtime = (root / f).stat().st_mtime
            assert start - 1 <= mtime <= end + 1, (f, mtime, job["StartTime"], job["EndTime"])
        check(root)


def dry_run_resources(log: str) -> dict[str, dict[str, str]]:
    """{rule: resources} of the jobs a `snakemake -n` output lists (the last job of each rule)."""
    res = {}
    for block in re.split(r"\n(?=\[[^\]]+\]\n(?:local)?rule )", log):
        m = re.search(r"(?:local)?rule (\S+):", block)
        r = re.search(r"\n\s+resources: (.*)", block)
        if m and r:
            res[m.group(1)] = dict(kv.split("=", 1) for kv in r.group(1).split(", ") if "=" in kv)
    return res


def test_install_profile_links_slurm_profile(tmp_path):
    """`make install-profile` links ~/.config/snakemake/slurm to the profile; the literal
    `snakemake --profile slurm -n` then plans the whole pipeline with the profile's resources (a dry run needs no
    SLURM)."""
    import yaml

    home = tmp_path / "home"
    home.mkdir()
    env = {**os.environ, "HOME": str(home), "PATH": f"{BIN}:{os.environ['PATH']}", "LONGTAIL_MLFLOW": "0"}
    env.pop("XDG_CONFIG_HOME", None)
    out = subprocess.run(["make", "-s", "install-profile"], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    link = home / ".config" / "snakemake" / "slurm"
    assert link.is_symlink() and link.resolve() == PROFILE.resolve(), link
    root = copy_worktree(tmp_path / "repo")   # no results/ there: every job is planned
    out = subprocess.run([str(BIN / "snakemake"), "--profile", "slurm", "-n"], cwd=root, env=env,
                         capture_output=True, text=True, timeout=300)
    log = out.stdout + out.stderr
    assert out.returncode == 0, log[-4000:]
    assert "This was a dry-run" in log and re.search(r"^prepare\s+1$", log, re.M), log[-4000:]
    # the profile's per-rule resources (GPU for the training/inference rules) reach the planned jobs
    profile = yaml.safe_load((PROFILE / "config.yaml").read_text())
    planned = dry_run_resources(log)
    unknown = set(profile["set-resources"]) - defined_rules(root)
    assert not unknown, f"set-resources of the slurm profile name rules the workflow lacks: {sorted(unknown)}"
    checked = [rule for rule in profile["set-resources"] if rule in planned]
    assert "train_proposals" in checked, sorted(planned)
    for rule in checked:
        for key, value in profile["set-resources"][rule].items():
            assert planned[rule].get(key) == str(value), (rule, key, planned[rule])
    assert planned["prepare"]["gpu"] == "0", planned["prepare"]


def _run_local(root: Path, *targets: str, timeout: int = 600) -> None:
    """Build targets in the copy with the local executor (what the SLURM-run rule needs, without SLURM jobs)."""
    out = subprocess.run([str(BIN / "snakemake"), "--cores", "1", "-q", "--", *targets], cwd=root, env=_env(root),
                         capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]


def _wait_for(what: str, cond, timeout: float, proc: subprocess.Popen | None = None, every: float = 1.0):
    import time

    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = cond()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"snakemake ended (status {proc.returncode}) while waiting for {what}")
        time.sleep(every)
    pytest.fail(f"timed out after {timeout} s waiting for {what}")


@pytest.mark.slow
def test_sigusr1_reaches_the_stage_and_the_retry_resumes(slurm, tmp_path):
    """The profile's pre-timeout warning `--signal=USR1@300` reaches the training through every process SLURM
    runs in between (job-step Snakemake -> bash -> longtail; rules/common.smk makes the first two ignore it), on
    the real local SLURM: `scancel --signal=USR1 <job>` (what SLURM sends at the warning time: every process of
    the job's steps, not the batch shell) while `train_proposals` runs under the profile; the training writes its
    checkpoint at the end of the current iteration and exits 2, the job fails, the profile's `retries: 1`
    resubmits it and the second SLURM job resumes from that iteration and finishes the schedule."""
    import yaml

    root = copy_worktree(tmp_path / "repo")
    _run_local(root, "results/data/train_base.json")
    profile = yaml.safe_load((PROFILE / "config.yaml").read_text())
    assert re.fullmatch(r"--signal=USR1@\d+", profile["set-resources"]["train_proposals"]["slurm_extra"]), \
        "the warning must go to the job steps (no B:, which signals only the batch shell)"
    iters = 6
    overlay = tmp_path / "long.yaml"   # no periodic checkpoint: the one found after the signal is the signal's
    overlay.write_text(yaml.safe_dump({"proposals": {"train": {"max_iters": iters, "checkpoint_interval": 1000,
                                                               "log_interval": 1, "warmup_iters": 1}}}))
    cpus, mem = _node_limits()
    res = [f"train_proposals:{k}" for k in ("gpu=0", f"mem_mb={min(mem, 6000)}", f"cpus_per_task={min(cpus, 2)}",
                                            "runtime=60")]
    work = root / "results/proposals/models/maskrcnn"
    cmd = [str(BIN / "snakemake"), "--profile", str(PROFILE), "--max-threads", str(cpus), "--configfile",
           str(overlay), "--slurm-init-seconds-before-status-checks", "2", "--latency-wait", "10",
           "--set-resources", *res, "--", str(work.relative_to(root) / "model.pth")]
    out_path = tmp_path / "snakemake.out"
    with out_path.open("w") as out_f:
        proc = subprocess.Popen(cmd, cwd=root, env=_env(root), stdout=out_f, stderr=subprocess.STDOUT, text=True)
        try:
            first, joblog = _wait_for("the SLURM job id", lambda: SUBMITTED.findall(out_path.read_text()), 300,
                                      proc)[0]
            # the training is in its first iterations (mmengine logs each one to stdout = the SLURM job's log):
            # the warning arrives now
            _wait_for("iteration 1 in the job's log", lambda: Path(joblog).is_file() and re.search(
                rf"Iter\(train\) \[\s*1/{iters}\]", Path(joblog).read_text()), 600, proc, every=0.5)
            sig = _sh("scancel", "--signal=USR1", first, timeout=30)
            assert sig.returncode == 0, sig.stderr
            rc = proc.wait(timeout=900)
        finally:
            if proc.poll() is None:
                proc.kill()
    text = out_path.read_text()
    assert rc == 0, text[-6000:]
    jobs = [j for j, _ in SUBMITTED.findall(text)]
    assert len(jobs) == 2 and jobs[0] == first, text[-6000:]        # the signalled job and its retry
    job1, job2 = scontrol_job(jobs[0]), scontrol_job(jobs[1])
    assert job1["JobState"] == "FAILED" and job2["JobState"] == "COMPLETED", (job1, job2)
    # the first job's stage stopped itself: exit status 2 (Preempted), not killed by the signal (its SLURM log
    # holds the job-step Snakemake's report), after its checkpoint of iteration n, 1 <= n < iters (no periodic one)
    first_log = Path(SUBMITTED.findall(text)[0][1]).read_text()
    assert "returned non-zero exit status 2." in first_log, first_log[-3000:]
    done = [int(i) for i in re.findall(rf"Iter\(train\) \[\s*(\d+)/{iters}\]", first_log)]
    second_log = Path(SUBMITTED.findall(text)[1][1]).read_text()
    assert "--attempt 2" in second_log and f"Advance dataloader {max(done)} steps" in second_log, second_log[-3000:]
    m = json.loads((work / "metrics.json").read_text())
    # the retry resumed at the signal's checkpoint, not from zero, and finished the schedule
    assert 1 <= m["start_iter"] == max(done) < iters and m["iterations"] == iters, (m, done)
    assert slurm_time(job1["EndTime"]) <= slurm_time(job2["StartTime"]) + 1
