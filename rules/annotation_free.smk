# annotation-free proposals (issue 6): UCM regions, Free Mask and multi-k spectral masks (Wang et al. 2022 3.2,
# Engstler et al. 2023) on val; Free Mask on train = FreeSOLO's pseudo-masks; FreeSOLO (SOLOv2 + weak losses +
# self-training, Wang et al. 3.3) and its proposals on val. All are scored by rules/proposals.smk's
# eval_proposals (<proposals.out_dir>/<method>/metrics_val.json). `longtail propose` keeps annotation_free.topk
# (100: the table reports AR@100) proposals per image for these methods, proposals.topk for the others.
AF = config["annotation_free"]
AF_FREESOLO = AF["freesolo"]["work_dir"]
AF_BACKBONE = [AF["backbone"]["checkpoint"]] if AF["backbone"]["checkpoint"] else []


rule propose_ucm:
    input:
        dataset=f"{DATA}/{{split}}.json",
        trees=f"{AF['ucm']['tree_dir']}/{{split}}/index.json",   # the gathered `longtail ucm` folder
        more_trees=expand("{d}/{{split}}/index.json", d=AF["ucm"]["more_tree_dirs"]),   # e.g. an edge variant's
    output:
        **proposal_shard("ucm"),
    params:
        out_dir=f"{PROP}/ucm/{{split}}",
        # the verb's NMS + top-K, the method's section
        reads=config_keys("proposals.nms_iou", "annotation_free.topk", "annotation_free.ucm"),
    priority: PRIORITY["chain"]
    threads: 1
    resources:
        mem_mb=4000,
        runtime=60,
    conda:
        "../envs/proposals.yaml"
    log:
        "results/logs/propose_ucm_{split}_{scatteritem}.log",
    shell:
        "longtail propose --method ucm --dataset {input.dataset} --out-dir {params.out_dir} "
        "--shard {wildcards.scatteritem} 2> {log}"


rule propose_freemask:
    input:
        dataset=f"{DATA}/{{split}}.json",
        backbone=AF_BACKBONE,
    output:
        **proposal_shard("freemask"),
    params:
        out_dir=f"{PROP}/freemask/{{split}}",
        # + the dense-feature settings: seed, threads, image size, backbone
        reads=config_keys("seed", "proposals.nms_iou", "annotation_free.topk", "annotation_free.threads",
                          "annotation_free.image", "annotation_free.backbone", "annotation_free.freemask"),
    threads: 2
    resources:
        mem_mb=6000,
        runtime=60,
        gpu=config["proposals"]["gpu"],  # backbone forward (GPUs per inference job)
    conda:
        "../envs/proposals.yaml"
    log:
        "results/logs/propose_freemask_{split}_{scatteritem}.log",
    shell:
        "longtail propose --method freemask --dataset {input.dataset} --out-dir {params.out_dir} "
        "--shard {wildcards.scatteritem} 2> {log}"


rule propose_spectral:
    input:
        dataset=f"{DATA}/{{split}}.json",
        backbone=AF_BACKBONE,
    output:
        **proposal_shard("spectral"),
    params:
        out_dir=f"{PROP}/spectral/{{split}}",
        reads=config_keys("seed", "proposals.nms_iou", "annotation_free.topk", "annotation_free.threads",
                          "annotation_free.image", "annotation_free.backbone", "annotation_free.spectral"),
    threads: 2
    resources:
        mem_mb=6000,
        runtime=60,
        gpu=config["proposals"]["gpu"],  # backbone forward (GPUs per inference job)
    conda:
        "../envs/proposals.yaml"
    log:
        "results/logs/propose_spectral_{split}_{scatteritem}.log",
    shell:
        "longtail propose --method spectral --dataset {input.dataset} --out-dir {params.out_dir} "
        "--shard {wildcards.scatteritem} 2> {log}"


rule train_freesolo:
    input:
        dataset=rules.prepare.output.train,
        pseudo=proposal_set("freemask", "train"),
    output:
        model=f"{AF_FREESOLO}/model.pth",
        config=f"{AF_FREESOLO}/config.py",
        metrics=f"{AF_FREESOLO}/metrics.json",
        figure=f"{AF_FREESOLO}/pseudo_vs_model.png",
    params:
        reads=config_keys("seed", "annotation_free.freesolo"),
        work_dir=AF_FREESOLO,
        launch=longtail_launch,
    threads: 2
    resources:
        mem_mb=12000,
        runtime=120,
        gpu=AF["freesolo"]["gpu"],
    conda:
        "../envs/proposals.yaml"
    log:
        "results/logs/train_freesolo.log",
    shell:
        "{params.launch} train-freesolo --dataset {input.dataset} --pseudo {input.pseudo} --work-dir {params.work_dir} "
        "--figure {output.figure} 2> {log}"


rule propose_solov2_free:
    input:
        model=rules.train_freesolo.output.model,
        config=rules.train_freesolo.output.config,
        dataset=f"{DATA}/{{split}}.json",
    output:
        **proposal_shard("solov2-free"),
    params:
        out_dir=f"{PROP}/solov2-free/{{split}}",
        reads=config_keys("proposals.nms_iou", "annotation_free.topk", "annotation_free.freesolo"),
        model_dir=AF_FREESOLO,  # the train_freesolo work dir of input.model / input.config
    threads: 2
    resources:
        mem_mb=8000,
        runtime=60,
        gpu=AF["freesolo"]["gpu"],
    conda:
        "../envs/proposals.yaml"
    log:
        "results/logs/propose_solov2_free_{split}_{scatteritem}.log",
    shell:
        "longtail propose --method solov2-free --dataset {input.dataset} --out-dir {params.out_dir} "
        "--model-dir {params.model_dir} --shard {wildcards.scatteritem} 2> {log}"


EXTRA_TARGETS += expand(f"{PROP}/{{method}}/metrics_val.json", method=PIPE["annotation_free"])
if "solov2-free" in PIPE["annotation_free"]:
    EXTRA_TARGETS += [rules.train_freesolo.output.figure]
ABLATION_TARGETS += expand(f"{PROP}/{{method}}/metrics_val.json", method=AF_METHODS)
ABLATION_TARGETS += [rules.train_freesolo.output.figure]
