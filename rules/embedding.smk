# embedding: mask-triplet Poincare embeddings (Weng et al. 2021, 3.2, 4.1) and the Table 2 ablations.
# <embedding.out_dir>/<method>/<variant>/{model.pt, metrics.json, embeddings.npz, embed_metrics.json}
#   method  = a proposal set <proposals.out_dir>/<method>/ (gt, a proposals.models key, an annotation-free method)
#   variant = a key of embedding.variants (poincare = the paper's setting, euclidean, alpha*/beta*, no_*, rp*)
EMB = config["embedding"]
EMB_VARIANTS = list(EMB["variants"])
# wildcard constraints of every rule over <method>/<variant>/ (embedding and discovery)
EMB_METHOD = "|".join(PROPOSAL_SETS)
EMB_VARIANT = "|".join(v.replace(".", r"\.") for v in EMB_VARIANTS)


rule train_embedding:
    input:
        proposals=proposal_set("{method}", "train"),
        # UCM region trees of the train images (hierarchy stage): extra parent/child pairs where present
        trees=f"{HIER}/ucm/train/index.json",
    output:
        model=f"{EMB_DIR}/{{method}}/{{variant}}/model.pt",
        metrics=f"{EMB_DIR}/{{method}}/{{variant}}/metrics.json",
    wildcard_constraints:
        method=EMB_METHOD,
        variant=EMB_VARIANT,
    params:
        reads=config_keys("seed", "embedding"),
        out_dir=f"{EMB_DIR}/{{method}}/{{variant}}",
        launch=longtail_launch,  # gpu > 1 (slurm profile): torchrun, DDP over the job's GPUs
    priority: PRIORITY["train"]
    threads: 1 + EMB["num_workers"]       # the main process + its DataLoader workers
    resources:
        mem_mb=6000,
        runtime=120,
        gpu=EMB["gpu"],
    conda:
        "../envs/embedding.yaml"
    log:
        "results/logs/train_embedding_{method}_{variant}.log",
    shell:
        "{params.launch} train-embedding --proposals {input.proposals} --region-trees {input.trees} "
        "--variant {wildcards.variant} --out-dir {params.out_dir} 2> {log}"


# embed runs as N shard jobs per model (scattergather `embed`, N = embedding.embed_shards; `--set-scatter embed=N`):
# rule embed writes <method>/<variant>/embeddings.shards/<i>-of-<N>.npz (the kept proposals of shard i of the val
# images), gather_embeddings concatenates them, embeds the anchors and writes embeddings.npz + embed_metrics.json.
scattergather:
    embed=EMB["embed_shards"],


rule embed:
    input:
        model=rules.train_embedding.output.model,
        proposals=proposal_set("{method}", "val"),
    output:
        shard=f"{EMB_DIR}/{{method}}/{{variant}}/embeddings.shards/{{scatteritem}}.npz",
    wildcard_constraints:
        method=EMB_METHOD,
        variant=EMB_VARIANT,
    params:
        reads=config_keys("embedding"),
        out=f"{EMB_DIR}/{{method}}/{{variant}}/embeddings.npz",   # gather_embeddings' output; shards next to it
    priority: PRIORITY["then"]
    threads: 1 + EMB["num_workers"]       # the main process + its DataLoader workers
    resources:
        mem_mb=6000,
        runtime=60,
        gpu=EMB["gpu"],
    conda:
        "../envs/embedding.yaml"
    log:
        "results/logs/embed_{method}_{variant}_{scatteritem}.log",
    shell:
        "longtail embed --model {input.model} --proposals {input.proposals} --out {params.out} "
        "--shard {wildcards.scatteritem} 2> {log}"


rule gather_embeddings:
    input:
        shards=lambda wc: gather.embed(f"{EMB_DIR}/{wc.method}/{wc.variant}/embeddings.shards/{{scatteritem}}.npz"),
        model=rules.train_embedding.output.model,
        proposals=proposal_set("{method}", "val"),
        anchors=rules.prepare.output.train,
    output:
        embeddings=f"{EMB_DIR}/{{method}}/{{variant}}/embeddings.npz",
        metrics=f"{EMB_DIR}/{{method}}/{{variant}}/embed_metrics.json",
    wildcard_constraints:
        method=EMB_METHOD,
        variant=EMB_VARIANT,
    params:
        reads=config_keys("seed", "embedding"),
    priority: PRIORITY["then"]
    threads: 1
    resources:
        mem_mb=6000,
        runtime=30,
        gpu=EMB["gpu"],
    conda:
        "../envs/embedding.yaml"
    log:
        "results/logs/gather_embeddings_{method}_{variant}.log",
    shell:
        "longtail gather-embeddings --model {input.model} --proposals {input.proposals} --anchors {input.anchors} "
        "--out {output.embeddings} --metrics {output.metrics} 2> {log}"


EXTRA_TARGETS += expand(rules.gather_embeddings.output.embeddings, method=PIPE["embedding_methods"],
                        variant=PIPE["embedding_variants"])
ABLATION_TARGETS += expand(rules.gather_embeddings.output.embeddings, method=PIPE["embedding_methods"], variant=EMB_VARIANTS)
