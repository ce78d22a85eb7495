# Unsupervised discovery of long-tail categories: the whole pipeline.
#   snakemake --profile workflow/profiles/local        (make run)
#   snakemake --profile slurm                          (after `make install-profile`)
configfile: "params.yaml"


include: "rules/common.smk"
include: "rules/data.smk"
include: "rules/hierarchy.smk"
include: "rules/proposals.smk"
include: "rules/annotation_free.smk"
include: "rules/embedding.smk"
include: "rules/discovery.smk"
include: "rules/report.smk"


rule all:
    input:
        final_targets(),
    default_target: True


rule ablations:
    # the full grid: every proposal network (+ DCL ablation), every annotation-free method, Table 2 variants
    input:
        final_targets(),
        ABLATION_TARGETS,
