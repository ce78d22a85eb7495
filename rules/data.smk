# data: raw sample (DVC) -> pipeline dataset with the base/novel split.


rule prepare:
    input:
        "data",
    output:
        train=f"{config['data']['out_dir']}/train.json",
        train_base=f"{config['data']['out_dir']}/train_base.json",
        val=f"{config['data']['out_dir']}/val.json",
        categories=f"{config['data']['out_dir']}/categories.json",
        metrics=f"{config['data']['out_dir']}/metrics.json",
    params:
        section=config["data"],
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    conda:
        "../envs/data.yaml"
    log:
        "results/logs/prepare.log",
    shell:
        "longtail prepare --out-dir {config[data][out_dir]} 2> {log}"
