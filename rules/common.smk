# Shared by all rule files: config validation, MLflow parent run, targets.
import json
import os

from snakemake.utils import validate

validate(config, schema="../workflow/schemas/params.schema.yaml")

# Every `longtail` job reads exactly this config (params.yaml + --configfile experiments + --config overrides);
# set at parse time so that SLURM job steps, which re-parse the workflow, export it too.
os.environ["LONGTAIL_CONFIG"] = json.dumps(config)


onstart:
    # One MLflow parent run per pipeline invocation; jobs (local or SLURM) inherit its id via the environment.
    if os.environ.get("LONGTAIL_MLFLOW", "1") not in ("0", "false", "no") and not os.environ.get("LONGTAIL_PARENT_RUN_ID"):
        from longtail.common.tracking import start_pipeline_run

        run_id = start_pipeline_run("snakemake", params=config)
        print(f"MLflow parent run {run_id}")


onsuccess:
    from longtail.common.tracking import end_pipeline_run

    end_pipeline_run("FINISHED")


onerror:
    from longtail.common.tracking import end_pipeline_run

    end_pipeline_run("FAILED")


def final_targets():
    """What `rule all` builds: the report when the stages it needs exist, else the last stage present."""
    targets = [f"{config['data']['out_dir']}/metrics.json"]
    targets += EXTRA_TARGETS
    return targets


# Rule files append their end products here (they are included after this file): EXTRA_TARGETS is what
# `rule all` builds (the default pipeline, = dvc.yaml), ABLATION_TARGETS what `snakemake ablations` adds.
EXTRA_TARGETS = []
ABLATION_TARGETS = []
PIPE = config["pipeline"]
