"""The conda envs (envs/*.yaml) pin exactly what the lock (requirements/constraints.txt) pins."""

import re
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def lock() -> dict[str, str]:
    pins = {}
    for line in (REPO / "requirements/constraints.txt").read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9_.\-]+)==(\S+)", line)
        if m:
            pins[m.group(1).lower().replace("_", "-")] = m.group(2)
    return pins


def test_env_pins_match_lock():
    pins = lock()
    envs = sorted((REPO / "envs").glob("*.yaml"))
    assert len(envs) >= 6
    for env in envs:
        spec = yaml.safe_load(env.read_text())
        pip = next(d["pip"] for d in spec["dependencies"] if isinstance(d, dict))
        for req in pip:
            if req.startswith("-"):
                continue
            name, version = req.split("==")
            assert pins.get(name.lower()) == version, f"{env.name}: {req} but the lock has {pins.get(name.lower())}"


def test_envs_generated_from_lock():
    r = subprocess.run([sys.executable, str(REPO / "scripts/make_envs.py"), "--check"], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_lock_matches_key_pins():
    pins = lock()
    assert pins["torch"] == "2.9.1" and pins["torchvision"] == "0.24.1"
    assert pins["mmcv"] == "2.1.0" and pins["mmdet"] == "3.3.0"
    assert "lvis" not in pins and "visaionlvis" in pins  # PyPI's lvis 0.5.3 crashes with numpy >= 1.24


def test_every_rule_names_an_existing_env():
    for smk in (REPO / "rules").glob("*.smk"):
        for env in re.findall(r'conda:\s*\n?\s*"([^"]+)"', smk.read_text()):
            assert (smk.parent / env).resolve().exists(), f"{smk.name}: conda env {env} does not exist"


def test_every_rule_declares_resources_env_and_log():
    """Each rule: threads, mem_mb, runtime (SLURM), a conda env, a log; GPU-able rules request `gpu`."""
    for smk in (REPO / "rules").glob("*.smk"):
        blocks = re.split(r"\n(?=rule \w+:)", smk.read_text())
        for block in blocks:
            m = re.match(r"rule (\w+):", block)
            if not m:
                continue
            for key in ("threads:", "mem_mb=", "runtime=", "conda:", "log:", "shell:"):
                assert key in block, f"{smk.name}: rule {m.group(1)} lacks {key}"
            if m.group(1) in GPU_RULES:
                assert "gpu=" in block, f"{smk.name}: rule {m.group(1)} (GPU-able) does not request gpu"


GPU_RULES = {"hierarchy_edges", "train_pixel_embedding", "train_proposals", "propose", "train_freesolo",
             "propose_solov2_free", "propose_freemask", "propose_spectral", "train_embedding", "embed", "cluster"}
