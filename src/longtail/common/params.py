"""params.yaml: load, override (``--set key=value``), validate against the workflow's JSON schema.

The same schema (``workflow/schemas/params.schema.yaml``, one ``$ref``-ed file per section) is used by
Snakemake (``snakemake.utils.validate``) and by every CLI verb, so a bad value fails the same way in both.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Iterable

import yaml

from longtail import REPO_ROOT
from longtail.common.errors import LongtailError



def project_root() -> Path:
    """The project the command runs in: the working directory when it holds params.yaml (Snakemake, DVC,
    a copy of the repo), else the repository the package is installed from."""
    cwd = Path.cwd()
    return cwd if (cwd / "params.yaml").exists() and (cwd / "workflow" / "schemas").is_dir() else REPO_ROOT


def project_path(path: str | Path) -> Path:
    """A path from params.yaml or a dataset: absolute as is, else relative to the project root."""
    path = Path(path)
    return path if path.is_absolute() else project_root() / path


def _load_yaml(path: Path, what: str) -> Any:
    if not path.exists():
        raise LongtailError(f"{what} not found: {path}")
    try:
        with open(path) as f:
            return yaml.safe_load(f)
    except yaml.YAMLError as e:
        raise LongtailError(f"{what} {path} is not valid YAML: {e}") from e


def load_schema(schema_dir: Path | None = None):
    """Return (schema, registry) with every ``*.schema.yaml`` of ``schema_dir`` resolvable by file name."""
    from referencing import Registry, Resource

    schema_dir = schema_dir or project_root() / "workflow" / "schemas"
    resources = []
    for p in sorted(schema_dir.glob("*.schema.yaml")):
        resources.append((p.name, Resource.from_contents(_load_yaml(p, "schema"),
                                                         default_specification=_draft())))
    registry = Registry().with_resources(resources)
    return _load_yaml(schema_dir / "params.schema.yaml", "schema"), registry


def _draft():
    from referencing.jsonschema import DRAFT202012

    return DRAFT202012


def schema_file(name: str, schema_dir: Path | None = None) -> dict:
    """One schema file of ``workflow/schemas`` (``name`` = ``params`` or a section: ``embedding``, ...)."""
    schema_dir = schema_dir or project_root() / "workflow" / "schemas"
    return _load_yaml(schema_dir / f"{name}.schema.yaml", "schema")


# Names the pipeline, the CLI and the report share; the schema is where they are written (once).

def annotation_free_methods() -> tuple[str, ...]:
    """The annotation-free proposal methods (``pipeline.annotation_free``'s enum in params.schema.yaml)."""
    return tuple(schema_file("params")["properties"]["pipeline"]["properties"]["annotation_free"]["items"]["enum"])


def proposal_sets(params: dict) -> list[str]:
    """Every proposal set a ``longtail propose`` run can write under ``proposals.out_dir``: the ``gt`` oracle,
    the networks of ``proposals.models`` and the annotation-free methods (the sets the embedding stage and the
    report accept as ``<method>``)."""
    return ["gt", *section(params, "proposals")["models"], *annotation_free_methods()]


def propose_topk(params: dict, method: str) -> int:
    """Proposals ``longtail propose --method <method>`` keeps per image after its mask NMS: ``annotation_free.topk``
    for the annotation-free methods (their table reports AR@100), ``proposals.topk`` for gt and the networks."""
    if method in annotation_free_methods():
        return int(section(params, "annotation_free")["topk"])
    return int(section(params, "proposals")["topk"])


def variant_keys() -> tuple[str, ...]:
    """Keys of the embedding section a Table 2 variant (``embedding.variants.<name>``) may override
    (``$defs.overridable`` of embedding.schema.yaml, which also validates them)."""
    return tuple(schema_file("embedding")["$defs"]["overridable"]["properties"])


def embedding_variants(params: dict) -> list[str]:
    """The Table 2 variant names, in params.yaml's order (``embedding.variants``)."""
    return list(section(params, "embedding")["variants"])


_VARIANT_SYMBOLS = {"alpha": "α", "beta": "β", "gamma": "γ", "proposals_per_image": "No. RP"}


def variant_settings(params: dict) -> dict[str, str]:
    """What every embedding variant changes (Table 2's "setting" column), written from its overrides in
    ``embedding.variants``: ``{"alpha": 0.1}`` -> "α = 0.1", ``losses`` without a term -> "w/o L_<term>", no
    override -> the section's own (paper) setting."""
    emb = section(params, "embedding")
    all_losses = schema_file("embedding")["$defs"]["losses"]["items"]["enum"]
    out = {}
    for name, overrides in emb["variants"].items():
        parts = []
        for key, value in (overrides or {}).items():
            if key == "space":
                parts.append("Euclidean space" if value == "euclidean" else "Poincaré ball")
            elif key == "losses":
                parts += [f"w/o L_{t}" for t in all_losses if t not in value]
            else:
                parts.append(f"{_VARIANT_SYMBOLS.get(key, key)} = {value}")
        out[name] = ", ".join(parts) or (f"{'Poincaré' if emb['space'] == 'poincare' else 'Euclidean'}, paper "
                                          f"setting (RP = {emb['proposals_per_image']}, α = {emb['alpha']}, "
                                          f"β = {emb['beta']})")
    return out


def validate_params(params: dict, source: str = "params.yaml") -> None:
    """Validate against the schema; the error names the key path and what is allowed."""
    import jsonschema

    schema, registry = load_schema()
    validator = jsonschema.Draft202012Validator(schema, registry=registry)
    errors = sorted(validator.iter_errors(params), key=lambda e: list(e.absolute_path))
    if errors:
        lines = []
        for e in errors[:10]:
            key = ".".join(str(p) for p in e.absolute_path) or "<top level>"
            lines.append(f"  {key}: {e.message}")
        raise LongtailError(f"{source} does not match workflow/schemas/params.schema.yaml:\n" + "\n".join(lines)
                            + "\nFix these keys (the schema says the allowed types and ranges).")


def parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise LongtailError(f"--set {item!r}: expected KEY=VALUE, e.g. --set embedding.alpha=0.5")
    key, value = item.split("=", 1)
    try:
        parsed = yaml.safe_load(value)
    except yaml.YAMLError as e:
        raise LongtailError(f"--set {item!r}: value is not valid YAML ({e})") from e
    return key.split("."), parsed


def apply_overrides(params: dict, overrides: Iterable[str]) -> dict:
    params = copy.deepcopy(params)
    for item in overrides or ():
        keys, value = parse_override(item)
        node = params
        for k in keys[:-1]:
            if not isinstance(node.get(k), dict):
                raise LongtailError(f"--set {item!r}: {'.'.join(keys[:-1])} is not a section of params.yaml")
            node = node[k]
        if keys[-1] not in node:
            raise LongtailError(f"--set {item!r}: unknown key {'.'.join(keys)} (see params.yaml)")
        node[keys[-1]] = value
    return params


CONFIG_ENV = "LONGTAIL_CONFIG"


def load_params(path: str | Path | None = None, overrides: Iterable[str] = ()) -> dict:
    """Load params.yaml, apply ``KEY=VALUE`` overrides, validate; raise LongtailError on any problem.

    Inside a Snakemake job (no explicit ``--params``) the config is Snakemake's own, exported by
    rules/common.smk as JSON in ``$LONGTAIL_CONFIG``: params.yaml merged with ``--configfile`` experiment
    files and ``--config`` overrides, so the rules and the CLI always see the same values.
    """
    if path is None and os.environ.get(CONFIG_ENV):
        path = Path(f"${CONFIG_ENV}")
        try:
            params = json.loads(os.environ[CONFIG_ENV])
        except json.JSONDecodeError as e:
            raise LongtailError(f"${CONFIG_ENV} is not valid JSON ({e}); unset it to read params.yaml") from e
        params = apply_overrides(params, overrides)
        validate_params(params, source="the Snakemake config ($LONGTAIL_CONFIG)")
        return params
    path = Path(path) if path else project_root() / "params.yaml"
    params = _load_yaml(path, "params file")
    if not isinstance(params, dict):
        raise LongtailError(f"params file {path} must be a mapping of sections")
    params = apply_overrides(params, overrides)
    validate_params(params, source=str(path))
    return params


def section(params: dict, name: str) -> dict:
    if name not in params:
        raise LongtailError(f"params.yaml has no section '{name}'; add it (see the README)")
    return params[name]


def params_hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:12]


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}; lists become their JSON text."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        elif isinstance(v, (list, tuple)):
            out[key] = json.dumps(v)
        else:
            out[key] = v
    return out
