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


# Where each stage writes: the `out_dir` of its params section (rules type no results/... path of their own;
# dvc.yaml reads the same keys as ${<section>.out_dir}). Rules name their inputs after another rule's outputs
# (`rules.<rule>.output.<name>`) where one rule makes them.
DATA = config["data"]["out_dir"]
HIER = config["hierarchy"]["out_dir"]
PROP = config["proposals"]["out_dir"]
EMB_DIR = config["embedding"]["out_dir"]
DISC_DIR = config["discovery"]["out_dir"]
REPORT_DIR = config["report"]["out_dir"]


# `params: reads=config_keys(...)` of every rule = exactly the config sections / dotted keys its command reads,
# the same list as the `params:` of its dvc.yaml stage. Snakemake's `rerun-triggers: params` (the profiles) then
# reruns a job when one of them changes, as `dvc repro` does; tests/test_orchestration.py checks that the two
# lists agree. A rule's other `params` are command-line pieces (e.g. a work dir), never unused config copies.
def config_keys(*keys):
    """{dotted key: its value in the config} of the keys a rule's command reads."""
    out = {}
    for key in keys:
        node = config
        for part in key.split("."):
            node = node[part]
        out[key] = node
    return out


def longtail_launch(wildcards, resources):
    """The command that starts a verb: `longtail`, or for a job given more than one process `torchrun` with that many
    processes on the job's node; the verb reads the world from torchrun's environment (longtail.common.distributed,
    mmengine's `pytorch` launcher: nccl on GPUs, gloo on the CPU). Processes = the resource `nproc` where a job sets
    one (e.g. `--set-resources train_embedding:nproc=2`, a CPU DDP world: tests/test_scale_rehearsal.py), else one
    per GPU (`resources.gpu`, e.g. the slurm profile's). docs/slurm.md."""
    n = int(getattr(resources, "nproc", 0) or resources.gpu)
    return f"torchrun --standalone --nproc_per_node {n} --no-python longtail" if n > 1 else "longtail"


# Inside a SLURM job, SIGUSR1 is the profile's pre-timeout warning (`--signal=USR1@300`), which SLURM sends to every
# process of the job step: the job-step Snakemake that parses this file, the shell it runs the rule in, torchrun
# and the stage. Only the stage acts on it (it checkpoints and exits 2; the retry resumes): the others ignore it,
# and the shell and torchrun inherit that, instead of dying at once and taking the stage with them (docs/slurm.md,
# tested in tests/test_slurm.py on a real SLURM).
if os.environ.get("SLURM_JOB_ID"):
    import signal as _signal
    import threading as _threading

    if _threading.current_thread() is _threading.main_thread():
        _signal.signal(_signal.SIGUSR1, _signal.SIG_IGN)


# Order of the ready jobs on a few cores (make run: 2), as `priority:` of the rules (Snakemake starts the highest
# first): the chain that unlocks most of the remaining work (prepare -> edges -> ucm trees -> gt / ucm proposals,
# their gathers) first, then the embedding trainings, then embed / cluster / evaluate and the proposal network;
# what nothing waits for (hierarchy_bsds, train_pixel_embedding, eval_proposals, error_analysis, report) fills the
# cores in between (priority 0). Without it the order of equal-priority jobs is arbitrary: the 2026-12-02 02:34 make
# run started the val edges -> ucm -> ucm proposals chain after train_pixel_embedding and ran its last ~100 s on
# mostly one core.
PRIORITY = {"chain": 3, "train": 2, "then": 1}


def final_targets():
    """What `rule all` builds: the report when the stages it needs exist, else the last stage present."""
    targets = [f"{DATA}/metrics.json"]
    targets += EXTRA_TARGETS
    return targets


# Rule files append their end products here (they are included after this file): EXTRA_TARGETS is what
# `rule all` builds (the default pipeline, = dvc.yaml), ABLATION_TARGETS what `snakemake ablations` adds.
EXTRA_TARGETS = []
ABLATION_TARGETS = []
PIPE = config["pipeline"]

# Method names, written once (longtail.common.params): the annotation-free methods (the schema's enum) and every
# proposal set a rule may embed / cluster (gt, the networks of proposals.models, the annotation-free methods).
from longtail.common.params import annotation_free_methods, proposal_sets

AF_METHODS = list(annotation_free_methods())
PROPOSAL_SETS = proposal_sets(config)
