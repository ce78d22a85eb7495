# proposals: class-agnostic proposal networks (Mask R-CNN, SOLOv2; Weng et al. 3.1) trained on base categories,
# the oracle `gt` proposal set, class-agnostic evaluation, segmentation error analysis and the DCL ablation
# (Chen et al. 2022). Outputs (PROP = proposals.out_dir): <method>/<split>/ (the proposal store: shards/ + index.json,
# longtail.proposals.format), metrics_<split>.json.
# Every proposal set is made by N shard jobs (scattergather `proposals`, N = proposals.shards; `--set-scatter
# proposals=N` overrides it): rule propose_* writes <set>/shards/<i>-of-<N>.jsonl (+ .json), one job per shard, and
# gather_proposals writes <set>/index.json, the file downstream rules take as the set (its folder is the set).
PROP_NETWORKS = list(config["proposals"]["models"])
PROP_SPLITS = ["train", "val"]


wildcard_constraints:
    split="train|val",


scattergather:
    proposals=config["proposals"]["shards"],


def proposal_shard(method):
    """The outputs of one shard job of <method>'s proposal sets (scatteritem = i-of-N)."""
    shard = f"{PROP}/{method}/{{split}}/shards/{{scatteritem}}"
    return {"proposals": f"{shard}.jsonl", "meta": f"{shard}.json"}


def proposal_set(method, split="{split}"):
    """The index.json of a proposal set: what downstream rules take as the set (longtail accepts it for its folder)."""
    return f"{PROP}/{method}/{split}/index.json"


rule propose_gt:
    input:
        dataset=f"{DATA}/{{split}}.json",
    output:
        **proposal_shard("gt"),
    params:
        reads=config_keys("proposals"),
        out_dir=f"{PROP}/gt/{{split}}",
    priority: PRIORITY["chain"]
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    conda:
        "../envs/proposals.yaml"
    log:
        "results/logs/propose_gt_{split}_{scatteritem}.log",
    shell:
        "longtail propose --method gt --dataset {input.dataset} --out-dir {params.out_dir} "
        "--shard {wildcards.scatteritem} 2> {log}"


# the set's index.json from its N shards (any method)
rule gather_proposals:
    input:
        shards=lambda wc: gather.proposals(f"{PROP}/{wc.method}/{wc.split}/shards/{{scatteritem}}.jsonl"),
    output:
        index=proposal_set("{method}"),
    wildcard_constraints:
        method="[A-Za-z0-9_-]+",
    params:
        reads=config_keys("proposals.shards"),
        out_dir=f"{PROP}/{{method}}/{{split}}",
    priority: PRIORITY["chain"]
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        "../envs/proposals.yaml"
    log:
        "results/logs/gather_proposals_{method}_{split}.log",
    shell:
        "longtail gather-proposals --proposals {params.out_dir} 2> {log}"


TRAIN_PSEUDO = config["proposals"]["train"]["pseudo"]["method"]


rule train_proposals:
    input:
        train=rules.prepare.output.train_base,
        # pseudo ground truth (proposals.train.pseudo.method): that annotation-free method's proposals on train
        pseudo=[proposal_set(TRAIN_PSEUDO, "train")] if TRAIN_PSEUDO else [],
    output:
        model=f"{PROP}/models/{{model}}/model.pth",
        config=f"{PROP}/models/{{model}}/config.py",
        metrics=f"{PROP}/models/{{model}}/metrics.json",
    wildcard_constraints:
        model="|".join(PROP_NETWORKS),
    params:
        reads=config_keys("seed", "proposals"),
        work_dir=f"{PROP}/models/{{model}}",
        launch=longtail_launch,
        pseudo=lambda wildcards, input: f" --pseudo {input.pseudo}" if input.pseudo else "",
    priority: PRIORITY["then"]
    threads: 2
    resources:
        mem_mb=12000,
        runtime=120,
        gpu=config["proposals"]["gpu"],
    conda:
        "../envs/proposals.yaml"
    log:
        "results/logs/train_proposals_{model}.log",
    shell:
        # evaluation happens once, on the proposal sets (eval_proposals), not again inside training
        "{params.launch} train-proposals --model {wildcards.model} --train-json {input.train} "
        "--work-dir {params.work_dir}{params.pseudo} 2> {log}"


rule propose:
    input:
        model=f"{PROP}/models/{{method}}/model.pth",
        config=f"{PROP}/models/{{method}}/config.py",
        dataset=f"{DATA}/{{split}}.json",
    output:
        **proposal_shard("{method}"),
    wildcard_constraints:
        method="|".join(PROP_NETWORKS),
    params:
        reads=config_keys("proposals"),
        model_dir=f"{PROP}/models/{{method}}",  # the train_proposals work dir of input.model / input.config
        out_dir=f"{PROP}/{{method}}/{{split}}",
    priority: PRIORITY["then"]
    threads: 2
    resources:
        mem_mb=8000,
        runtime=60,
        gpu=config["proposals"]["gpu"],
    conda:
        "../envs/proposals.yaml"
    log:
        "results/logs/propose_{method}_{split}_{scatteritem}.log",
    shell:
        "longtail propose --method {wildcards.method} --dataset {input.dataset} --out-dir {params.out_dir} "
        "--model-dir {params.model_dir} --shard {wildcards.scatteritem} 2> {log}"


# any proposal set (networks, gt, annotation-free methods): class-agnostic AP/AR on base, novel and all
rule eval_proposals:
    input:
        proposals=proposal_set("{method}"),
        dataset=f"{DATA}/{{split}}.json",
    output:
        metrics=f"{PROP}/{{method}}/metrics_{{split}}.json",
        figure=f"{PROP}/{{method}}/overlay_{{split}}.png",
    wildcard_constraints:
        method="[A-Za-z0-9_-]+",
    params:
        reads=config_keys("proposals"),
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    conda:
        "../envs/proposals.yaml"
    log:
        "results/logs/eval_proposals_{method}_{split}.log",
    shell:
        "longtail eval-proposals --proposals {input.proposals} --dataset {input.dataset} --out {output.metrics} "
        "--figure {output.figure} 2> {log}"


rule error_analysis:
    input:
        proposals=proposal_set("{method}"),
        dataset=f"{DATA}/{{split}}.json",
    output:
        errors=f"{PROP}/{{method}}/errors_{{split}}.json",
    wildcard_constraints:
        method="[A-Za-z0-9_-]+",
    params:
        reads=config_keys("proposals.error_analysis"),
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    conda:
        "../envs/proposals.yaml"
    log:
        "results/logs/error_analysis_{method}_{split}.log",
    shell:
        "longtail error-analysis --proposals {input.proposals} --dataset {input.dataset} --out {output.errors} "
        "2> {log}"


# DCL ablation (Chen et al. 2022): the same data and schedule with and without the dense contrastive loss
rule dcl_ablation:
    input:
        base_metrics=f"{PROP}/maskrcnn/metrics_val.json",
        dcl_metrics=f"{PROP}/maskrcnn_dcl/metrics_val.json",
        base_errors=f"{PROP}/maskrcnn/errors_val.json",
        dcl_errors=f"{PROP}/maskrcnn_dcl/errors_val.json",
        base_train=f"{PROP}/models/maskrcnn/metrics.json",
        dcl_train=f"{PROP}/models/maskrcnn_dcl/metrics.json",
    output:
        comparison=f"{PROP}/dcl_ablation.json",
    params:
        reads=config_keys("proposals"),
        baseline=f"{PROP}/maskrcnn",  # the folders of the metrics_val.json / errors_val.json inputs
        variant=f"{PROP}/maskrcnn_dcl",
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    conda:
        "../envs/proposals.yaml"
    log:
        "results/logs/dcl_ablation.log",
    shell:
        "longtail compare-proposals --baseline {params.baseline} --variant {params.variant} "
        "--split val --out {output.comparison} 2> {log}"


EXTRA_TARGETS += expand(proposal_set("gt", "{split}"), split=PROP_SPLITS)
EXTRA_TARGETS += expand(proposal_set("{method}", "{split}"), method=PIPE["proposal_networks"],
                        split=PIPE["network_splits"])
EXTRA_TARGETS += expand(f"{PROP}/{{method}}/metrics_val.json", method=["gt", *PIPE["proposal_networks"]])
EXTRA_TARGETS += expand(f"{PROP}/{{method}}/errors_val.json", method=PIPE["proposal_networks"])
ABLATION_TARGETS += expand(proposal_set("{method}", "{split}"), method=PROP_NETWORKS, split=PROP_SPLITS)
ABLATION_TARGETS += expand(f"{PROP}/{{method}}/metrics_val.json", method=PROP_NETWORKS)
ABLATION_TARGETS += expand(f"{PROP}/{{method}}/errors_val.json", method=PROP_NETWORKS)
ABLATION_TARGETS += [rules.dcl_ablation.output.comparison]
