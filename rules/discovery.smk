# discovery: hyperbolic k-means + elbow, cluster labelling with GT anchors, novel-category AP, purity
# (Weng et al. 2021, 3.3, 4.3, Tables 1-3).
# <discovery.out_dir>/<method>/<variant>/{clusters.npz, elbow.json, cluster_metrics.json,
#                                        detections.json, cluster_labels.json, metrics.json}
# method x variant = the embeddings of rules/embedding.smk (EMB_METHOD / EMB_VARIANT constraints).
DISC = config["discovery"]


# GPUs of a cluster / evaluate job: discovery.gpu when discovery.device is cuda (a CPU-configured stage asks for
# none; a cuda one on a node without a GPU falls back to the CPU with a warning: longtail.common.runtime)
DISC_GPU = int(DISC["gpu"]) if str(DISC["device"]).startswith("cuda") else 0


rule cluster:
    input:
        embeddings=rules.gather_embeddings.output.embeddings,
    output:
        clusters=f"{DISC_DIR}/{{method}}/{{variant}}/clusters.npz",
        elbow=f"{DISC_DIR}/{{method}}/{{variant}}/elbow.json",
        metrics=f"{DISC_DIR}/{{method}}/{{variant}}/cluster_metrics.json",
    wildcard_constraints:
        method=EMB_METHOD,
        variant=EMB_VARIANT,
    params:
        reads=config_keys("seed", "discovery"),
        out_dir=f"{DISC_DIR}/{{method}}/{{variant}}",
    priority: PRIORITY["then"]
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
        gpu=DISC_GPU,
    conda:
        "../envs/discovery.yaml"
    log:
        "results/logs/cluster_{method}_{variant}.log",
    shell:
        "longtail cluster --embeddings {input.embeddings} --out-dir {params.out_dir} 2> {log}"


rule evaluate:
    input:
        embeddings=rules.gather_embeddings.output.embeddings,
        clusters=rules.cluster.output.clusters,
        proposals=proposal_set("{method}", "val"),
        gt=rules.prepare.output.val,
    output:
        detections=f"{DISC_DIR}/{{method}}/{{variant}}/detections.json",
        labels=f"{DISC_DIR}/{{method}}/{{variant}}/cluster_labels.json",
        metrics=f"{DISC_DIR}/{{method}}/{{variant}}/metrics.json",
    wildcard_constraints:
        method=EMB_METHOD,
        variant=EMB_VARIANT,
    params:
        reads=config_keys("seed", "discovery"),
        out_dir=f"{DISC_DIR}/{{method}}/{{variant}}",
    priority: PRIORITY["then"]
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
        gpu=DISC_GPU,  # the random-baseline k-means runs on discovery.device too
    conda:
        "../envs/discovery.yaml"
    log:
        "results/logs/evaluate_{method}_{variant}.log",
    shell:
        "longtail evaluate --embeddings {input.embeddings} --clusters {input.clusters} "
        "--proposals {input.proposals} --gt {input.gt} --out-dir {params.out_dir} 2> {log}"


EXTRA_TARGETS += expand(rules.evaluate.output.metrics, method=PIPE["embedding_methods"],
                        variant=PIPE["embedding_variants"])
ABLATION_TARGETS += expand(rules.evaluate.output.metrics, method=PIPE["embedding_methods"], variant=EMB_VARIANTS)
