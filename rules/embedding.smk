# embedding: mask-triplet Poincare embeddings (Weng et al. 2021, 3.2, 4.1) and the Table 2 ablations.
# results/embedding/<method>/<variant>/{model.pt, metrics.json, embeddings.npz, embed_metrics.json}
#   method  = a proposal set results/proposals/<method>/ (embedding.proposal_methods)
#   variant = a key of embedding.variants (poincare = the paper's setting, euclidean, alpha*/beta*, no_*, rp*)
EMB = config["embedding"]
EMB_DIR = "results/embedding"
EMB_METHODS = list(EMB["proposal_methods"])
EMB_VARIANTS = list(EMB["variants"])


rule train_embedding:
    input:
        proposals="results/proposals/{method}/train",
        # UCM region trees of the train images (hierarchy stage): extra parent/child pairs where present
        trees=f"{config['hierarchy']['out_dir']}/ucm/train",
    output:
        model=f"{EMB_DIR}/{{method}}/{{variant}}/model.pt",
        metrics=f"{EMB_DIR}/{{method}}/{{variant}}/metrics.json",
    wildcard_constraints:
        method="|".join(EMB_METHODS),
        variant="|".join(v.replace(".", r"\.") for v in EMB_VARIANTS),
    params:
        section=EMB,
    threads: 1
    resources:
        mem_mb=6000,
        runtime=120,
        gpu=EMB["gpu"],
    conda:
        "../envs/embedding.yaml"
    log:
        "results/logs/train_embedding_{method}_{variant}.log",
    shell:
        "longtail train-embedding --proposals {input.proposals} --region-trees {input.trees} "
        "--variant {wildcards.variant} --out-dir " + EMB_DIR + "/{wildcards.method}/{wildcards.variant} 2> {log}"


rule embed:
    input:
        model=f"{EMB_DIR}/{{method}}/{{variant}}/model.pt",
        proposals="results/proposals/{method}/val",
        anchors=f"{config['data']['out_dir']}/train.json",
    output:
        embeddings=f"{EMB_DIR}/{{method}}/{{variant}}/embeddings.npz",
        metrics=f"{EMB_DIR}/{{method}}/{{variant}}/embed_metrics.json",
    wildcard_constraints:
        method="|".join(EMB_METHODS),
        variant="|".join(v.replace(".", r"\.") for v in EMB_VARIANTS),
    params:
        section=EMB,
    threads: 1
    resources:
        mem_mb=6000,
        runtime=60,
        gpu=EMB["gpu"],
    conda:
        "../envs/embedding.yaml"
    log:
        "results/logs/embed_{method}_{variant}.log",
    shell:
        "longtail embed --model {input.model} --proposals {input.proposals} --anchors {input.anchors} "
        "--out {output.embeddings} --metrics {output.metrics} 2> {log}"


EXTRA_TARGETS += expand(f"{EMB_DIR}/{{method}}/{{variant}}/embeddings.npz", method=PIPE["embedding_methods"],
                        variant=PIPE["embedding_variants"])
ABLATION_TARGETS += expand(f"{EMB_DIR}/{{method}}/{{variant}}/embeddings.npz", method=PIPE["embedding_methods"],
                           variant=EMB_VARIANTS)
