# data: raw sample (DVC) -> pipeline dataset with the base/novel split.


rule prepare:
    input:
        "data",
    output:
        train=f"{DATA}/train.json",
        train_base=f"{DATA}/train_base.json",
        val=f"{DATA}/val.json",
        categories=f"{DATA}/categories.json",
        metrics=f"{DATA}/metrics.json",
    params:
        reads=config_keys("data"),
        out_dir=DATA,
    priority: PRIORITY["chain"]
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    conda:
        "../envs/data.yaml"
    log:
        "results/logs/prepare.log",
    shell:
        "longtail prepare --out-dir {params.out_dir} 2> {log}"
