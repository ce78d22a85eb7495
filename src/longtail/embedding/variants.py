"""Embedding variants (Weng et al. Table 2 ablations): ``embedding.variants.<name>`` overrides a few keys of the
embedding section; :func:`variant_config` applies them, and :data:`VARIANT_KEYS` lists the keys a variant may
override."""

from __future__ import annotations

import copy

from longtail.common import LongtailError
from longtail.common.params import variant_keys

#: keys of the embedding section that a variant may override (the schema's $defs.overridable)
VARIANT_KEYS = variant_keys()



def variant_config(cfg: dict, variant: str) -> dict:
    """The embedding section with the variant's overrides applied."""
    variants = cfg["variants"]
    if variant not in variants:
        raise LongtailError(f"--variant {variant!r}: not a key of embedding.variants "
                            f"({', '.join(sorted(variants))}); add it to params.yaml.")
    out = copy.deepcopy(cfg)
    for k, v in (variants[variant] or {}).items():
        if k not in VARIANT_KEYS:
            raise LongtailError(f"embedding.variants.{variant}.{k}: not an overridable key ({', '.join(VARIANT_KEYS)})")
        out[k] = v
    out["variant"] = variant
    for k in ("variants", "default_variants", "proposal_methods"):
        out.pop(k, None)
    return out
