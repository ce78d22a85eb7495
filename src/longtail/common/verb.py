"""The prelude every ``longtail <verb>`` shares, written once: params, the stage's section, an MLflow run.

::

    @stage_verb("cluster", "discovery", tags=lambda args, cfg: {"embeddings": args.embeddings})
    def run_cluster(args, params, cfg, run):
        ...                                    # parse -> call the library -> write
        run.write_metrics(out / "metrics.json", metrics)

``params`` is params.yaml (``--params``, ``--set`` applied) validated against the schema; ``cfg`` its section
(``config(args, cfg)`` may narrow or specialise it, e.g. the embedding variant; what it returns is what MLflow
logs as the run's params); ``run`` the :class:`~longtail.common.tracking.StageRun` of the stage's nested MLflow
run, which is marked FAILED when the verb raises. A run name or tag known only after reading an input goes
through :func:`name_run`.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

from longtail.common.params import load_params, section
from longtail.common.tracking import StageRun, stage_run

ArgsFn = Callable[[Any, dict], Any]


def stage_verb(stage: str, section_name: str, *, config: ArgsFn | None = None, run_name: ArgsFn | None = None,
               tags: ArgsFn | None = None) -> Callable:
    """Decorator turning ``fn(args, params, cfg, run)`` into the ``fn(args)`` argparse calls."""
    def deco(fn: Callable[[Any, dict, dict, StageRun], Any]) -> Callable[[Any], int]:
        @functools.wraps(fn)
        def verb(args) -> int:
            params = load_params(args.params, args.overrides)
            cfg = section(params, section_name)
            if config is not None:
                cfg = config(args, cfg)
            with stage_run(stage, params=cfg, all_params=params,
                           run_name=run_name(args, cfg) if run_name else None,
                           tags=tags(args, cfg) if tags else None) as run:
                return int(fn(args, params, cfg, run) or 0)
        return verb
    return deco


def name_run(run: StageRun, name: str, **tags) -> None:
    """Name the run (and tag it) once an input has told what it is, e.g. the method of a proposal set."""
    run.set_tags({"mlflow.runName": name, **tags})
