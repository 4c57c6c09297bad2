"""A search's Optuna study in its storage (sweeper.searchstorage): its name, the trials told to it
before, and the trials an earlier driver asked for but was killed before telling."""
from __future__ import annotations

import hashlib
import json

from sweeper.store import Store


def search_key(search, base) -> str:
    """The Optuna study's key: the search's identity without `num_samples`, so that raising the
    budget continues the same study instead of starting a new one."""
    text = json.dumps([base.trial_id, {k: list(v) for k, v in sorted(search.space.items())}, search.metric,
                       search.mode, search.asha, search.seed])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def trial_id_of(base, params: dict) -> str:
    """The store's trial for an Optuna trial's parameters (Tune names them `sampled/FIELD`)."""
    sampled = {key.rsplit("/", 1)[-1]: value for key, value in params.items()}
    return type(base).from_values({**base.to_dict(), **sampled}).trial_id


def _study(storage, name: str, mode: str):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # not "A new study created ..." on every run
    return optuna.create_study(storage=storage, study_name=name, load_if_exists=True,
                               direction="minimize" if mode == "min" else "maximize")


def trial_count(storage, name: str) -> int:
    """Every trial the study holds, whatever its state."""
    import optuna

    return len(optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False))


def told_trials(storage, name: str, search, base, store: Store, study: str) -> list:
    """The study's finished trials (complete or pruned), once trials left running by a killed
    driver are settled from the store: told their result when the store has the trial done (the
    trial finished; only its driver died), pruned when ASHA had stopped it, failed otherwise (a
    failed trial does not use up the budget: the next run asks for another)."""
    from optuna.trial import TrialState

    ot = _study(storage, name, search.mode)
    stale = [t for t in ot.get_trials(deepcopy=False) if t.state == TrialState.RUNNING]
    if stale:
        status = store.trial_status(study)
        rows = store.read(study, "trials") if status.done else None
        for t in stale:
            tid = trial_id_of(base, t.params)
            row = rows[rows["trial_id"] == tid] if rows is not None else []
            if tid in status.done and len(row) and search.metric in row:
                ot.tell(t.number, float(row[search.metric].iloc[0]))
            elif tid in status.stopped:
                ot.tell(t.number, state=TrialState.PRUNED)
            else:
                ot.tell(t.number, state=TrialState.FAIL)
    return [t for t in ot.get_trials(deepcopy=False) if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
