"""The study files a command that reads a store is given (`figures`, `status`): their current plans,
made with the flags `sweeper run` took (`--scale`, `--quick`, `--set`, `--name`; the parser's
`cli.add_study_file_options`), so that `sweeper figures STORE studies/x.py --scale cpu` restricts to
the plan the cpu run ran."""
from __future__ import annotations

from sweeper.errors import SweeperError


def plans_of(args, scale: str) -> dict:
    """Study name -> the current plan of each study file given (sweeper.analysis.cohort), at the
    scale and with the overrides the command names: the same study `sweeper run` was given."""
    from sweeper.analysis.cohort import Plan
    from sweeper.study import load_study

    if not args.studies and (scale != "full" or args.overrides or args.name):
        raise SweeperError("--quick, --scale, --set and --name apply to study files; name one "
                           "(e.g. studies/depth_vs_width.py), or pick a stored study with --study", "studies")
    plans = {}
    for path in args.studies:
        study = load_study(path, scale=scale, overrides=args.overrides, name=args.name)
        plans[study.name] = Plan.of(study)
    return plans
