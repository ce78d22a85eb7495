# report: one self-contained HTML page over every discovery result (Weng et al. Tables 1-3, Figures 1 and 4).
REPORT = config["report"]


rule report:
    input:
        metrics=expand(f"{DISC_DIR}/{{method}}/{{variant}}/metrics.json", method=PIPE["embedding_methods"],
                       variant=PIPE["embedding_variants"]),
        clusters=expand(f"{DISC_DIR}/{{method}}/{{variant}}/clusters.npz", method=PIPE["embedding_methods"],
                        variant=PIPE["embedding_variants"]),
        elbow=expand(f"{DISC_DIR}/{{method}}/{{variant}}/elbow.json", method=PIPE["embedding_methods"],
                     variant=PIPE["embedding_variants"]),
        embeddings=expand(f"{EMB_DIR}/{{method}}/{{variant}}/embeddings.npz", method=PIPE["embedding_methods"],
                          variant=PIPE["embedding_variants"]),
        proposals=expand("results/proposals/{method}/val", method=PIPE["embedding_methods"]),
        gt=f"{config['data']['out_dir']}/val.json",
    output:
        html=f"{REPORT['out_dir']}/index.html",
        metrics=f"{REPORT['out_dir']}/metrics.json",
    params:
        section=REPORT,
    threads: 1
    resources:
        mem_mb=4000,
        runtime=20,
    conda:
        "../envs/report.yaml"
    log:
        "results/logs/report.log",
    shell:
        "longtail report --discovery-dir " + DISC_DIR + " --embedding-dir " + EMB_DIR + " --proposals-dir "
        "results/proposals --gt " + config["data"]["out_dir"] + "/val.json --out-dir " + REPORT["out_dir"] + " 2> {log}"


EXTRA_TARGETS += [f"{REPORT['out_dir']}/index.html"]
