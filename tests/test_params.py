"""params.yaml + workflow/schemas: the only place defaults and shared names live (issue 14)."""

from __future__ import annotations

import inspect

import pytest
import yaml

from longtail.common import LongtailError
from longtail.common.params import (annotation_free_methods, apply_overrides, embedding_variants, load_params,
                                    proposal_sets, propose_topk, schema_file, validate_params, variant_keys)


def test_every_section_and_used_key_is_required(params):
    """Dropping a key the code reads is a schema error naming it, not a silent code default."""
    for path in (["tracking"], ["tracking", "experiment"], ["discovery", "n_init"], ["hierarchy", "ucm", "mix_weight"],
                 ["annotation_free", "backbone", "layer"], ["annotation_free", "topk"], ["embedding", "out_dir"],
                 ["discovery", "out_dir"]):
        p = yaml.safe_load(yaml.safe_dump(params))
        node = p
        for k in path[:-1]:
            node = node[k]
        del node[path[-1]]
        with pytest.raises(LongtailError, match=path[-2] if len(path) > 1 else "required property"):
            validate_params(p)


def test_removed_keys_stay_removed(params):
    """Keys nothing read (annotation_free.out_dir) or that duplicated a derived list (embedding.proposal_methods)."""
    assert "out_dir" not in params["annotation_free"] and "proposal_methods" not in params["embedding"]
    with pytest.raises(LongtailError, match="Additional properties"):
        validate_params({**params, "annotation_free": {**params["annotation_free"], "out_dir": "x"}})


def test_owt_ucm_library_defaults_are_params_yaml(params):
    """owt_ucm keeps documented defaults for callers outside the pipeline: they must be hierarchy.ucm's values."""
    from longtail.hierarchy.ucm import owt_ucm

    sig = inspect.signature(owt_ucm).parameters
    for key in ("use_orientation", "boundary", "mix_weight", "max_leaves"):
        assert sig[key].default == params["hierarchy"]["ucm"][key], key
    from longtail.hierarchy.process import tree_from_edges

    assert all(p.default is inspect.Parameter.empty for p in inspect.signature(tree_from_edges).parameters.values())


def test_method_names_come_from_the_schema(params):
    enum = schema_file("params")["properties"]["pipeline"]["properties"]["annotation_free"]["items"]["enum"]
    assert annotation_free_methods() == tuple(enum) == ("ucm", "freemask", "spectral", "solov2-free")
    from longtail.proposals.annotation_free import METHODS

    assert METHODS == annotation_free_methods()
    sets = proposal_sets(params)
    assert sets[0] == "gt" and set(params["proposals"]["models"]) < set(sets) and set(enum) < set(sets)
    assert set(params["pipeline"]["embedding_methods"]) <= set(sets)


def test_variant_keys_are_embedding_keys(params):
    """What a Table 2 variant may override is a real key of the embedding section, and every variant of
    params.yaml overrides only those (the schema validates it)."""
    emb = schema_file("embedding")
    keys = variant_keys()
    assert {"space", "alpha", "beta", "losses", "proposals_per_image"} <= set(keys)
    assert set(keys) <= set(emb["properties"]) and "variants" not in keys and "out_dir" not in keys
    names = embedding_variants(params)
    assert names[0] == "poincare"
    assert set(params["pipeline"]["embedding_variants"]) <= set(names)
    for v in names:
        assert set(params["embedding"]["variants"][v] or {}) <= set(keys), v
    bad = apply_overrides(params, ["embedding.variants={'x': {'seedless': 1}}"])
    with pytest.raises(LongtailError, match="embedding.variants"):
        validate_params(bad)


def test_propose_topk_per_method(params):
    assert propose_topk(params, "ucm") == params["annotation_free"]["topk"] == 100
    assert propose_topk(params, "solov2-free") == 100
    assert propose_topk(params, "gt") == propose_topk(params, "maskrcnn") == params["proposals"]["topk"] == 50
    p = load_params(overrides=["annotation_free.topk=7", "proposals.topk=3"])
    assert propose_topk(p, "freemask") == 7 and propose_topk(p, "gt") == 3


def test_tracking_experiment_from_params_env_overrides(params, monkeypatch):
    from longtail.common import tracking

    monkeypatch.setattr(tracking, "EXPERIMENT", None)
    assert tracking.experiment_name(params) == params["tracking"]["experiment"] == "longtail"
    p = apply_overrides(params, ["tracking.experiment=ablation-7"])
    assert tracking.experiment_name(p) == "ablation-7"
    assert tracking.experiment_name({"discovery": {}}) == "longtail"   # a section alone: params.yaml's value
    monkeypatch.setattr(tracking, "EXPERIMENT", "from-env")
    assert tracking.experiment_name(p) == "from-env"


def test_variant_settings_describe_the_overrides(params):
    """The report's Table 2 "setting" column comes from embedding.variants (no list of names of its own)."""
    from longtail.common.params import variant_settings

    s = variant_settings(params)
    assert list(s) == embedding_variants(params)
    assert s["poincare"] == "Poincaré, paper setting (RP = 50, α = 0.2, β = 0.2)"
    assert s["euclidean"] == "Euclidean space" and s["alpha0.1"] == "α = 0.1" and s["rp20"] == "No. RP = 20"
    assert s["no_mask"] == "w/o L_mask" and s["no_hier"] == "w/o L_hierarchical"
    p = apply_overrides(params, ["embedding.variants={'lr3': {'lr': 0.001, 'losses': [mask]}}"])
    assert variant_settings(p) == {"lr3": "lr = 0.001, w/o L_object, w/o L_hierarchical"}
