# hierarchy: HED edges -> OWT-UCM region trees (COCO train/val of `longtail prepare`, BSDS500 val), the BSDS500
# benchmark, and pixel embeddings trained from the region trees (Zhang & Maire 2020).
# Outputs (HIER = hierarchy.out_dir): {edges,ucm}/<set>/ (shards/<i>-of-<N>/ + index.json,
# longtail.hierarchy.shards), metrics/{edges,ucm}_<set>.json, figures/hierarchy_<set>.png, bsds_val.json,
# pixel_embedding.pt
# edges and ucm run as N shard jobs per image set (scattergather `hierarchy`, N = hierarchy.shards;
# `--set-scatter hierarchy=N` overrides it): hierarchy_edges / hierarchy_ucm write <set>/shards/<i>-of-<N>/, one
# job per shard, and gather_hierarchy_{edges,ucm} write <set>/index.json (+ the stage's metrics), the file
# downstream rules take as the folder.
HIER_SOURCES = {
    "train": rules.prepare.output.train,
    "val": rules.prepare.output.val,
    "bsds_val": "data/bsds500/images/val",
}


wildcard_constraints:
    imgset="|".join(HIER_SOURCES),
    variant="[A-Za-z0-9_-]+",


scattergather:
    hierarchy=config["hierarchy"]["shards"],


def hierarchy_set(stage, imgset="{imgset}"):
    """The index.json of an edges / ucm folder: what downstream rules take as the folder."""
    return f"{HIER}/{stage}/{imgset}/index.json"


def shard_folders(folder):
    """Input function of a gather: the N shard folders (scattergather `hierarchy`) of the edges / ucm folder
    ``folder`` (a pattern over the job's wildcards)."""
    return lambda wc: gather.hierarchy(folder.format(**dict(wc.items())) + "/shards/{scatteritem}")


rule hierarchy_edges:
    input:
        source=lambda wc: HIER_SOURCES[wc.imgset],
    output:
        shard=directory(f"{HIER}/edges/{{imgset}}/shards/{{scatteritem}}"),
    params:
        reads=config_keys("hierarchy"),
        out_dir=f"{HIER}/edges/{{imgset}}",
        sets="",  # the edge variants' --set overrides (rule hierarchy_edges_variant)
    priority: PRIORITY["chain"]
    threads: 2
    resources:
        mem_mb=6000,
        runtime=60,
        gpu=config["hierarchy"]["gpu"],
    conda:
        "../envs/hierarchy.yaml"
    log:
        "results/logs/hierarchy_edges_{imgset}_{scatteritem}.log",
    shell:
        "longtail edges --source {input.source} --out-dir {params.out_dir} --shard {wildcards.scatteritem}"
        "{params.sets} 2> {log}"


rule gather_hierarchy_edges:
    input:
        shards=shard_folders(f"{HIER}/edges/{{imgset}}"),
    output:
        index=hierarchy_set("edges"),
        metrics=f"{HIER}/metrics/edges_{{imgset}}.json",
    params:
        reads=config_keys("hierarchy.shards"),
        out_dir=f"{HIER}/edges/{{imgset}}",
    priority: PRIORITY["chain"]
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        "../envs/hierarchy.yaml"
    log:
        "results/logs/gather_hierarchy_edges_{imgset}.log",
    shell:
        "longtail gather-hierarchy --dir {params.out_dir} --metrics {output.metrics} 2> {log}"


rule hierarchy_ucm:
    input:
        edges=hierarchy_set("edges"),
    output:
        shard=directory(f"{HIER}/ucm/{{imgset}}/shards/{{scatteritem}}"),
    params:
        reads=config_keys("hierarchy"),
        out_dir=f"{HIER}/ucm/{{imgset}}",
    priority: PRIORITY["chain"]
    threads: 1
    resources:
        mem_mb=4000,
        runtime=60,
    conda:
        "../envs/hierarchy.yaml"
    log:
        "results/logs/hierarchy_ucm_{imgset}_{scatteritem}.log",
    shell:
        "longtail ucm --edges {input.edges} --out-dir {params.out_dir} --shard {wildcards.scatteritem} 2> {log}"


rule gather_hierarchy_ucm:
    input:
        shards=shard_folders(f"{HIER}/ucm/{{imgset}}"),
    output:
        index=hierarchy_set("ucm"),
        metrics=f"{HIER}/metrics/ucm_{{imgset}}.json",
        figure=f"{HIER}/figures/hierarchy_{{imgset}}.png",
    params:
        reads=config_keys("hierarchy.shards", "hierarchy.figures"),
        out_dir=f"{HIER}/ucm/{{imgset}}",
    priority: PRIORITY["chain"]
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        "../envs/hierarchy.yaml"
    log:
        "results/logs/gather_hierarchy_ucm_{imgset}.log",
    shell:
        "longtail gather-hierarchy --dir {params.out_dir} --metrics {output.metrics} --figure {output.figure} "
        "2> {log}"


# Edge variants (hierarchy.edge_variants, e.g. workflow/experiments/ucm_two_scales.yaml): HED with some
# hierarchy.edges overrides (--set) -> OWT-UCM, in <HIER>/variants/<name>/{edges,ucm}/<set>/, over the same image
# sets as the main stage and sharded the same way: the four rules above with the variant's folders (N shard jobs,
# scattergather `hierarchy`, + the gathers; a consumer takes <HIER>/variants/<name>/ucm/<set>/index.json).
HIER_VARIANTS = config["hierarchy"]["edge_variants"]
HIER_VAR = f"{HIER}/variants/{{variant}}"


def _variant_sets(wc):
    """The edge variant's overrides: ' --set hierarchy.edges.<key>=<value>' each (appended to the edges command)."""
    import json

    return "".join(f" --set 'hierarchy.edges.{k}={json.dumps(v)}'" for k, v in HIER_VARIANTS[wc.variant].items())


use rule hierarchy_edges as hierarchy_edges_variant with:
    output:
        shard=directory(f"{HIER_VAR}/edges/{{imgset}}/shards/{{scatteritem}}"),
    params:
        reads=config_keys("hierarchy"),
        out_dir=f"{HIER_VAR}/edges/{{imgset}}",
        sets=_variant_sets,
    resources:
        mem_mb=6000,
        runtime=120,
        gpu=config["hierarchy"]["gpu"],
    log:
        "results/logs/hierarchy_edges_{variant}_{imgset}_{scatteritem}.log",


use rule gather_hierarchy_edges as gather_hierarchy_edges_variant with:
    input:
        shards=shard_folders(f"{HIER_VAR}/edges/{{imgset}}"),
    output:
        index=f"{HIER_VAR}/edges/{{imgset}}/index.json",
        metrics=f"{HIER_VAR}/metrics/edges_{{imgset}}.json",
    params:
        reads=config_keys("hierarchy.shards"),
        out_dir=f"{HIER_VAR}/edges/{{imgset}}",
    log:
        "results/logs/gather_hierarchy_edges_{variant}_{imgset}.log",


use rule hierarchy_ucm as hierarchy_ucm_variant with:
    input:
        edges=rules.gather_hierarchy_edges_variant.output.index,
    output:
        shard=directory(f"{HIER_VAR}/ucm/{{imgset}}/shards/{{scatteritem}}"),
    params:
        reads=config_keys("hierarchy"),
        out_dir=f"{HIER_VAR}/ucm/{{imgset}}",
    log:
        "results/logs/hierarchy_ucm_{variant}_{imgset}_{scatteritem}.log",


use rule gather_hierarchy_ucm as gather_hierarchy_ucm_variant with:
    input:
        shards=shard_folders(f"{HIER_VAR}/ucm/{{imgset}}"),
    output:
        index=f"{HIER_VAR}/ucm/{{imgset}}/index.json",
        metrics=f"{HIER_VAR}/metrics/ucm_{{imgset}}.json",
        figure=f"{HIER_VAR}/figures/hierarchy_{{imgset}}.png",
    params:
        reads=config_keys("hierarchy.shards", "hierarchy.figures"),
        out_dir=f"{HIER_VAR}/ucm/{{imgset}}",
    log:
        "results/logs/gather_hierarchy_ucm_{variant}_{imgset}.log",


rule hierarchy_bsds:
    input:
        images="data/bsds500/images/val",
        gt="data/bsds500/groundTruth/val",
        reference="data/bsds500/ucm2/val",
    output:
        metrics=f"{HIER}/bsds_val.json",
    params:
        reads=config_keys("hierarchy"),
    threads: config["hierarchy"]["bench"]["nproc"]
    resources:
        mem_mb=6000,
        runtime=240,
        gpu=config["hierarchy"]["gpu"],
    conda:
        "../envs/hierarchy.yaml"
    log:
        "results/logs/hierarchy_bsds.log",
    shell:
        "longtail bsds --images {input.images} --gt {input.gt} --reference-ucm {input.reference} "
        "--out {output.metrics} 2> {log}"


rule train_pixel_embedding:
    input:
        trees=hierarchy_set("ucm", "train"),
        images="data/bsds500/images/val",
        gt="data/bsds500/groundTruth/val",
    output:
        model=f"{HIER}/pixel_embedding.pt",
        metrics=f"{HIER}/metrics/pixel_embedding.json",
    params:
        reads=config_keys("seed", "hierarchy"),
        launch=longtail_launch,  # gpu > 1 (slurm profile): torchrun, DDP over the job's GPUs
    threads: 2
    resources:
        mem_mb=8000,
        runtime=120,
        gpu=config["hierarchy"]["gpu"],
    conda:
        "../envs/hierarchy.yaml"
    log:
        "results/logs/train_pixel_embedding.log",
    shell:
        "{params.launch} train-pixel-embedding --trees {input.trees} --eval-images {input.images} --eval-gt {input.gt} "
        "--out {output.model} --metrics {output.metrics} 2> {log}"


EXTRA_TARGETS += expand(hierarchy_set("ucm", "{imgset}"), imgset=list(HIER_SOURCES))
EXTRA_TARGETS += [rules.hierarchy_bsds.output.metrics, rules.train_pixel_embedding.output.model]
