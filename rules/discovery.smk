# discovery: hyperbolic k-means + elbow, cluster labelling with GT anchors, novel-category AP, purity
# (Weng et al. 2021, 3.3, 4.3, Tables 1-3).
# results/discovery/<method>/<variant>/{clusters.npz, elbow.json, cluster_metrics.json,
#                                       detections.json, cluster_labels.json, metrics.json}
# method x variant = the embeddings of rules/embedding.smk (embedding.proposal_methods x embedding.variants).
DISC = config["discovery"]
DISC_DIR = "results/discovery"


rule cluster:
    input:
        embeddings=f"{EMB_DIR}/{{method}}/{{variant}}/embeddings.npz",
    output:
        clusters=f"{DISC_DIR}/{{method}}/{{variant}}/clusters.npz",
        elbow=f"{DISC_DIR}/{{method}}/{{variant}}/elbow.json",
        metrics=f"{DISC_DIR}/{{method}}/{{variant}}/cluster_metrics.json",
    wildcard_constraints:
        method="|".join(EMB_METHODS),
        variant="|".join(v.replace(".", r"\.") for v in EMB_VARIANTS),
    params:
        section=DISC,
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
        gpu=DISC["gpu"],
    conda:
        "../envs/discovery.yaml"
    log:
        "results/logs/cluster_{method}_{variant}.log",
    shell:
        "longtail cluster --embeddings " + EMB_DIR + "/{wildcards.method}/{wildcards.variant}/embeddings.npz "
        "--out-dir " + DISC_DIR + "/{wildcards.method}/{wildcards.variant} 2> {log}"


rule evaluate:
    input:
        embeddings=f"{EMB_DIR}/{{method}}/{{variant}}/embeddings.npz",
        clusters=f"{DISC_DIR}/{{method}}/{{variant}}/clusters.npz",
        proposals="results/proposals/{method}/val",
        gt=f"{config['data']['out_dir']}/val.json",
    output:
        detections=f"{DISC_DIR}/{{method}}/{{variant}}/detections.json",
        labels=f"{DISC_DIR}/{{method}}/{{variant}}/cluster_labels.json",
        metrics=f"{DISC_DIR}/{{method}}/{{variant}}/metrics.json",
    wildcard_constraints:
        method="|".join(EMB_METHODS),
        variant="|".join(v.replace(".", r"\.") for v in EMB_VARIANTS),
    params:
        section=DISC,
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    conda:
        "../envs/discovery.yaml"
    log:
        "results/logs/evaluate_{method}_{variant}.log",
    shell:
        "longtail evaluate --embeddings " + EMB_DIR + "/{wildcards.method}/{wildcards.variant}/embeddings.npz "
        "--clusters " + DISC_DIR + "/{wildcards.method}/{wildcards.variant}/clusters.npz "
        "--proposals results/proposals/{wildcards.method}/val --gt " + config["data"]["out_dir"] + "/val.json "
        "--out-dir " + DISC_DIR + "/{wildcards.method}/{wildcards.variant} 2> {log}"


DISC_METRICS = expand(f"{DISC_DIR}/{{method}}/{{variant}}/metrics.json", method=PIPE["embedding_methods"],
                      variant=PIPE["embedding_variants"])
EXTRA_TARGETS += DISC_METRICS
ABLATION_TARGETS += expand(f"{DISC_DIR}/{{method}}/{{variant}}/metrics.json", method=PIPE["embedding_methods"],
                           variant=EMB_VARIANTS)
