"""``longtail train-freesolo``: SOLOv2 trained on annotation-free pseudo-masks (FreeSOLO §3.3).

The proposals themselves come from ``longtail propose --method ucm|freemask|spectral|solov2-free`` (the
proposal stage's verb calls :func:`longtail.proposals.annotation_free.propose_dataset`).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from longtail.cli import add_params_args
from longtail.common.verb import stage_verb

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train-freesolo", help="FreeSOLO: SOLOv2 with weak projection/pairwise losses on "
                                              "annotation-free pseudo-masks, then self-training (Wang et al. 3.3)")
    add_params_args(p)
    p.add_argument("--dataset", required=True, help="COCO JSON of the (unlabelled) training images")
    p.add_argument("--pseudo", required=True, help="proposal directory of the pseudo-masks "
                                                   "(e.g. results/proposals/freemask/train)")
    p.add_argument("--work-dir", required=True, help="round<r>/ checkpoints; model.pth + config.py of the last round")
    p.add_argument("--device", default="cpu", help="device for the self-training predictions")
    p.add_argument("--figure", default=None, help="PNG: pseudo-masks vs. the trained model's masks (report)")
    p.set_defaults(func=run_train)


@stage_verb("train-freesolo", "annotation_free", config=lambda args, cfg: cfg["freesolo"],
            run_name=lambda args, cfg: "train-freesolo", tags=lambda args, cfg: {"pseudo": args.pseudo})
def run_train(args, params, fcfg, run) -> int:
    """``fcfg``: the ``annotation_free.freesolo`` section."""
    from longtail.common.runtime import select_device
    from longtail.proposals.annotation_free.freesolo import train_freesolo

    metrics = train_freesolo(fcfg, int(params["seed"]), args.dataset, args.pseudo, args.work_dir, run,
                             device=str(select_device(args.device, "train-freesolo")), figure=args.figure)
    run.write_metrics(Path(args.work_dir) / "metrics.json", metrics)
    log.info("train-freesolo: %s", {k: v for k, v in metrics.items() if k != "rounds"})
    return 0
