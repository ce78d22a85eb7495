# annotation-free proposals (issue 6): UCM regions, Free Mask and multi-k spectral masks (Wang et al. 2022 3.2,
# Engstler et al. 2023) on val; Free Mask on train = FreeSOLO's pseudo-masks; FreeSOLO (SOLOv2 + weak losses +
# self-training, Wang et al. 3.3) and its proposals on val. All are scored by rules/proposals.smk's
# eval_proposals (results/proposals/<method>/metrics_val.json). topk=100: the table reports AR@100.
AF = config["annotation_free"]
AF_PROP = config["proposals"]["out_dir"]
AF_DATA = config["data"]["out_dir"]
AF_FREESOLO = AF["freesolo"]["work_dir"]
AF_BACKBONE = [AF["backbone"]["checkpoint"]] if AF["backbone"]["checkpoint"] else []


rule propose_ucm:
    input:
        dataset=f"{AF_DATA}/{{split}}.json",
        trees=f"{AF['ucm']['tree_dir']}/{{split}}",
        more_trees=expand("{d}/{{split}}", d=AF["ucm"]["more_tree_dirs"]),
    output:
        directory(f"{AF_PROP}/ucm/{{split}}"),
    params:
        section=AF["ucm"],
    threads: 1
    resources:
        mem_mb=4000,
        runtime=60,
    conda:
        "../envs/proposals.yaml"
    log:
        "results/logs/propose_ucm_{split}.log",
    shell:
        "longtail propose --method ucm --dataset {input.dataset} --out-dir {output} --set proposals.topk=100 2> {log}"


rule propose_freemask:
    input:
        dataset=f"{AF_DATA}/{{split}}.json",
        backbone=AF_BACKBONE,
    output:
        directory(f"{AF_PROP}/freemask/{{split}}"),
    params:
        section=AF["freemask"],
    threads: 2
    resources:
        mem_mb=6000,
        runtime=60,
        gpu=config["proposals"]["gpu"],  # backbone forward (GPUs per inference job)
    conda:
        "../envs/proposals.yaml"
    log:
        "results/logs/propose_freemask_{split}.log",
    shell:
        "longtail propose --method freemask --dataset {input.dataset} --out-dir {output} --set proposals.topk=100 "
        "2> {log}"


rule propose_spectral:
    input:
        dataset=f"{AF_DATA}/{{split}}.json",
        backbone=AF_BACKBONE,
    output:
        directory(f"{AF_PROP}/spectral/{{split}}"),
    params:
        section=AF["spectral"],
    threads: 2
    resources:
        mem_mb=6000,
        runtime=60,
        gpu=config["proposals"]["gpu"],  # backbone forward (GPUs per inference job)
    conda:
        "../envs/proposals.yaml"
    log:
        "results/logs/propose_spectral_{split}.log",
    shell:
        "longtail propose --method spectral --dataset {input.dataset} --out-dir {output} --set proposals.topk=100 "
        "2> {log}"


rule train_freesolo:
    input:
        dataset=f"{AF_DATA}/train.json",
        pseudo=f"{AF_PROP}/freemask/train",
    output:
        model=f"{AF_FREESOLO}/model.pth",
        config=f"{AF_FREESOLO}/config.py",
        metrics=f"{AF_FREESOLO}/metrics.json",
        figure=f"{AF_FREESOLO}/pseudo_vs_model.png",
    params:
        section=AF["freesolo"],
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
        "longtail train-freesolo --dataset {input.dataset} --pseudo {input.pseudo} --work-dir " + AF_FREESOLO + " "
        "--figure {output.figure} 2> {log}"


rule propose_solov2_free:
    input:
        model=f"{AF_FREESOLO}/model.pth",
        config=f"{AF_FREESOLO}/config.py",
        dataset=f"{AF_DATA}/{{split}}.json",
    output:
        directory(f"{AF_PROP}/solov2-free/{{split}}"),
    params:
        section=AF["freesolo"],
    threads: 2
    resources:
        mem_mb=8000,
        runtime=60,
        gpu=AF["freesolo"]["gpu"],
    conda:
        "../envs/proposals.yaml"
    log:
        "results/logs/propose_solov2_free_{split}.log",
    shell:
        "longtail propose --method solov2-free --dataset {input.dataset} --out-dir {output} --model-dir "
        + AF_FREESOLO + " --set proposals.topk=100 2> {log}"


EXTRA_TARGETS += expand(f"{AF_PROP}/{{method}}/metrics_val.json", method=PIPE["annotation_free"])
if "solov2-free" in PIPE["annotation_free"]:
    EXTRA_TARGETS += [f"{AF_FREESOLO}/pseudo_vs_model.png"]
ABLATION_TARGETS += expand(f"{AF_PROP}/{{method}}/metrics_val.json", method=["ucm", "freemask", "spectral", "solov2-free"])
ABLATION_TARGETS += [f"{AF_FREESOLO}/pseudo_vs_model.png"]
