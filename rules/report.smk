# report: one self-contained HTML page over every discovery result (Weng et al. Tables 1-3, Figures 1 and 4).
REPORT = config["report"]
# the discovery runs of the pipeline section (method x variant)
REPORT_RUNS = dict(method=PIPE["embedding_methods"], variant=PIPE["embedding_variants"])


rule report:
    input:
        metrics=expand(rules.evaluate.output.metrics, **REPORT_RUNS),
        clusters=expand(rules.cluster.output.clusters, **REPORT_RUNS),
        elbow=expand(rules.cluster.output.elbow, **REPORT_RUNS),
        embeddings=expand(rules.gather_embeddings.output.embeddings, **REPORT_RUNS),
        proposals=expand(proposal_set("{method}", "val"), method=PIPE["embedding_methods"]),
        gt=rules.prepare.output.val,
    output:
        html=f"{REPORT_DIR}/index.html",
        metrics=f"{REPORT_DIR}/metrics.json",
    params:
        reads=config_keys("seed", "report", "discovery.purity_iou"),
        # the folders the inputs above lie in (the report finds every <method>/<variant>/ run there)
        discovery_dir=DISC_DIR,
        embedding_dir=EMB_DIR,
        proposals_dir=PROP,
        out_dir=REPORT_DIR,
    threads: 1
    resources:
        mem_mb=4000,
        runtime=20,
    conda:
        "../envs/report.yaml"
    log:
        "results/logs/report.log",
    shell:
        "longtail report --discovery-dir {params.discovery_dir} --embedding-dir {params.embedding_dir} "
        "--proposals-dir {params.proposals_dir} --gt {input.gt} --out-dir {params.out_dir} 2> {log}"


EXTRA_TARGETS += [rules.report.output.html]
