"""Print the sbatch call (and the job step's srun) that snakemake-executor-plugin-slurm builds for the jobs of a dry
run, without a SLURM cluster: the plugin's own get_submit_command / set_gres_string / get_cpu_setting applied to
the resources Snakemake resolved for each job (`snakemake --profile workflow/profiles/slurm -n -p`).

    snakemake --profile workflow/profiles/slurm -n -p <targets> | python scripts/sbatch_lines.py [rule ...]

Account/partition (site-specific, guessed by the plugin at submission) are left out; the wrapped command is
`python -m snakemake ... --executor slurm-jobstep` in the batch script and the rule's shell command in its step.
"""

from __future__ import annotations

import re
import sys
from types import SimpleNamespace


class Resources(dict):
    __getattr__ = dict.__getitem__


def jobs(text: str):
    for block in re.split(r"\n(?=\[[^\]]+\]\n(?:local)?rule )", text):
        m = re.search(r"(?:local)?rule (\S+):", block)
        r = re.search(r"\n\s+resources: (.*)", block)
        w = re.search(r"\n\s+wildcards: (.*)", block)
        cmd = re.search(r"Shell command: (.*)", block)
        if not (m and r):
            continue
        res = Resources()
        for kv in r.group(1).split(", "):
            k, _, v = kv.partition("=")
            res[k] = int(v) if re.fullmatch(r"-?\d+", v) else v
        yield m.group(1), (w.group(1) if w else ""), res, (cmd.group(1) if cmd else "")


def main() -> int:
    from snakemake_executor_plugin_slurm.submit_string import get_submit_command
    from snakemake_executor_plugin_slurm.utils import set_gres_string
    from snakemake_executor_plugin_slurm.validation import validate_slurm_extra
    from snakemake_executor_plugin_slurm_jobstep import get_cpu_setting, get_gpu_setting, get_node_setting

    wanted = set(sys.argv[1:])
    for rule, wildcards, res, cmd in jobs(sys.stdin.read()):
        if wanted and rule not in wanted:
            continue
        job = SimpleNamespace(name=rule, resources=res, threads=res.get("_cores", 1))
        validate_slurm_extra(job)
        wc = "_".join(v.split("=", 1)[1] for v in wildcards.split(", ") if "=" in v)
        params = dict(run_uuid="<run uuid>", slurm_logfile=f".snakemake/slurm_logs/rule_{rule}/%j.log",
                      comment_str=f"rule_{rule}" + (f"_wildcards_{wc}" if wc else ""), account="", partition="",
                      workdir="<repo>")
        sbatch = re.sub(r"\s+", " ", get_submit_command(job, params) + set_gres_string(job))
        gpu_job = bool(res.get("gpu"))
        srun = re.sub(r"\s+", " ", f"srun -n1 --cpu-bind=q {get_cpu_setting(job, gpu_job)} {get_gpu_setting(job)} "
                                    f"{get_node_setting(job)}")
        print(f"# {rule} {wildcards}\n{sbatch} --wrap=\"python -m snakemake ... --executor slurm-jobstep\"\n"
              f"  step: {srun} python -m snakemake ...\n  shell: {cmd}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
