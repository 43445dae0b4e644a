"""`facetl tune --config BASE --space lr=log:1e-5:1e-2 --space strategy=frozen,last-block --trials 30 --out DIR`.

A search that learns from finished runs: Optuna's TPE sampler proposes each trial's values, a median pruner stops
a trial whose selection metric (val loss by default) at an epoch is worse than the median of earlier trials at that
epoch (a fit callback, pruning.PruneTrial, so the stopped run is still a whole run folder whose run.json says why),
and the study lives in an RDB storage (SQLite in DIR unless --storage names another), so rerunning continues it and any
number of workers share it.

DIR holds the study: tune.json (what is searched), base.yaml (the configuration every trial starts from),
study.db, split.csv (the first trial's split, which every later trial reuses, so their figures compare),
trial-NNN/ (ordinary run folders), trials.csv and trials.md (every trial, PRUNED ones marked), best.yaml
(the best trial's resolved config: `facetl train --config DIR/best.yaml --out NEW` reruns it).

A worker is one command line, `python -m facetl tune --worker DIR [--worker-index K]` (worker_command): it runs
trials until the study has its --trials. Any launcher starts them, by one path (launch_workers): the in-process
launcher runs the one worker here, local processes N of them on this machine (--parallel N), SLURM one job array
on nodes that see DIR and the storage; DIR/jobs.json keeps their job ids and states, DIR/workers/worker-K/ their
exit records (and local logs).

"Best" is the metric table's (facetl.evaluate.metrics.best_of): the trial whose value of the selection metric
(--select, val loss by default), at the epoch the run selected, is best in that metric's direction.
"""
from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import shutil
import sys
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import yaml

from facetl.config import TrainConfig, build_config, dump_yaml, load_yaml, with_absolute_paths
from facetl.errors import FacetlError
from facetl.evaluate.metrics import best_of, best_words, metric
from facetl.experiments.results import read_run
from facetl.experiments.jobs import Job, JobBook
from facetl.experiments.pruning import PruneTrial
from facetl.experiments.space import Dimension, check_space, parse_space
from facetl.experiments.run import Launch
from facetl.runtime.signals import terminate_as_interrupt
from facetl.tables import markdown_table
from facetl.runfolder import atomic_write_csv, atomic_write_json, atomic_write_text, prepare_run_folder

INSTALL = "facetl tune needs Optuna: pip install 'facetl[tune]'"
# trials that count towards --trials: a failed one (an error, a killed worker) is retried by the next
COUNTED = ("COMPLETE", "PRUNED", "RUNNING", "WAITING")
SURPLUS = "surplus"  # a trial's user attribute: made beyond --trials by a worker that raced another; not trained
JOBS_FILE = "jobs.json"  # the workers' job ids and states, as a sweep keeps its points'
START_LOCK = "start.lock"  # held while a tune makes or joins DIR's study


@dataclass(frozen=True)
class Search:
    """What a tune asks for: the --space items, how many trials, where the study lives, when pruning starts."""

    space: list[str]
    trials: int = 20
    storage: str | None = None     # None: sqlite:///DIR/study.db
    startup_trials: int = 5


@dataclass(frozen=True)
class Study:
    """What a study searches and where it lives: tune.json and base.yaml in its folder."""

    folder: Path
    base: TrainConfig
    space: list[str]               # the --space items as given
    trials: int
    storage: str
    name: str
    startup_trials: int

    @property
    def dimensions(self) -> list[Dimension]:
        return parse_space(self.space)

    @property
    def select(self) -> str:
        """The metric that scores a trial: the one each run selects its epoch by (--select)."""
        return self.base.select

    @property
    def direction(self) -> str:
        return "maximize" if metric(self.select).higher_is_better else "minimize"

    def describe(self) -> dict:
        return {"study": self.name, "storage": self.storage, "trials": self.trials, "space": self.space,
                "startup_trials": self.startup_trials, "seed": self.base.seed}


def optuna_module():
    try:
        import optuna
    except ImportError:
        raise FacetlError(INSTALL) from None
    import warnings

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # facetl says what happens, once
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)  # the heartbeat's
    return optuna


def start_study(base: TrainConfig, search: Search, out: str | Path) -> Study:
    """Check everything, then make or reopen DIR's study. The same command again continues it (with more
    --trials, it goes on further); another search in the same DIR is refused."""
    optuna = optuna_module()
    from facetl.train.fit import check_output_places

    if base.folds:
        raise FacetlError("tune trains one run per trial on one split; leave out --folds")
    space = parse_space(search.space)
    base = with_absolute_paths(dataclasses.replace(base, out=None))
    base.check()
    check_space(space, base)
    check_output_places(base, out, run=False)  # base has no out: the flag is the --out given
    folder = Path(out).expanduser().resolve()
    default_storage = f"sqlite:///{folder / 'study.db'}"
    study = Study(folder, base, list(search.space), search.trials, search.storage or default_storage, folder.name,
                  search.startup_trials)
    if not (folder / START_LOCK).exists():  # else another tune is starting this study: judged under its lock below
        _refuse_other_files(folder)
    created = not folder.exists()
    prepare_run_folder(folder)
    try:
        with _holding(folder / START_LOCK):  # two tunes started at once on a new --out: one makes it, one joins
            _refuse_other_files(folder)
            study = _same_search(study, search.storage)
            create_study(optuna, study)  # before tune.json records the storage: a bad one is never kept
            atomic_write_text(folder / "base.yaml", dump_yaml(base))
            atomic_write_json(folder / "tune.json", study.describe())
    except FacetlError:
        if created and {p.name for p in folder.iterdir()} <= {START_LOCK}:  # refused: leave nothing behind
            shutil.rmtree(folder, ignore_errors=True)
        raise
    return study


def _refuse_other_files(folder: Path) -> None:
    if folder.is_dir() and not (folder / "tune.json").is_file() and \
            any(not p.name.startswith((START_LOCK, ".write-test-")) for p in folder.iterdir()):
        raise FacetlError(f"--out {folder} holds files but no facetl tune study; give a new or empty folder")


def _same_search(study: Study, storage: str | None) -> Study:
    """The study as DIR's tune.json has it, when there is one: the same search, in its recorded storage."""
    if not (study.folder / "tune.json").is_file():
        return study
    earlier = read_study(study.folder)
    if earlier.space != study.space or dump_yaml(earlier.base) != dump_yaml(study.base):
        raise FacetlError(f"{study.folder} holds another search ({' '.join(earlier.space)}, base.yaml); give a new "
                          "--out, or the same --config, flags and --space to continue it")
    if storage and storage != earlier.storage:
        raise FacetlError(f"{study.folder}'s study is in {earlier.storage}; leave out --storage to continue it")
    return dataclasses.replace(study, storage=earlier.storage)


def create_study(optuna, study: Study, tries: int = 5) -> None:
    """Make the study in its storage, or find it there. Workers on other machines may be making it at the same
    moment (the lock is only this folder's): the loser of that race sees an IntegrityError, and tries again."""
    for attempt in range(tries):
        try:
            optuna.create_study(storage=_storage(optuna, study.storage), study_name=study.name,
                                direction=study.direction, load_if_exists=True)
            return
        except Exception as exc:  # an RDB URL that does not open: SQLAlchemy's or Optuna's own words, one line
            if "IntegrityError" in type(exc).__name__ and attempt + 1 < tries:
                time.sleep(0.5 * (attempt + 1))
                continue
            raise FacetlError(f"--storage {study.storage}: cannot open the study "
                              f"({str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__})") from None


@contextmanager
def _holding(path: Path):
    with open(path, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def read_study(folder: Path) -> Study:
    """DIR's study as tune.json and base.yaml describe it (JSON and YAML: data, never code)."""
    path = folder / "tune.json"
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
        base = build_config(load_yaml(folder / "base.yaml"))
        return Study(folder, base, list(values["space"]), int(values["trials"]), str(values["storage"]),
                     str(values["study"]), int(values["startup_trials"]))
    except FileNotFoundError:
        raise FacetlError(f"{folder} holds no facetl tune study (no tune.json); start one with facetl tune "
                          "--out") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise FacetlError(f"{path} is damaged ({str(exc)[:120]})") from None


def _storage(optuna, url: str):
    # SQLite shared by several workers: wait for a writer rather than fail; heartbeats mark a killed worker's
    # trial failed, so it does not count towards --trials for ever
    connect = {"connect_args": {"timeout": 120}} if url.startswith("sqlite") else {}
    return optuna.storages.RDBStorage(url, engine_kwargs=connect, heartbeat_interval=30, grace_period=120)


def open_study(study: Study, sampler_seed: int | None = None):
    optuna = optuna_module()
    sampler = optuna.samplers.TPESampler() if sampler_seed is None else trial_seeded_sampler(optuna, sampler_seed)
    return optuna.load_study(study_name=study.name, storage=_storage(optuna, study.storage), sampler=sampler,
                             pruner=optuna.pruners.MedianPruner(n_startup_trials=study.startup_trials))


def trial_seed(seed: int, number: int) -> int:
    """The sampler's seed for trial `number` of a study seeded `seed`: numbers are unique in a study, so no two
    trials draw alike, and a study started afresh draws what it drew before."""
    import numpy as np

    return int(np.random.SeedSequence([seed, number]).generate_state(1)[0])


def trial_seeded_sampler(optuna, seed: int):
    """TPE, seeded afresh for each trial from --seed and the trial's number. One seed per process replayed the
    study: a rerun, or a second tune on the same study, started the same random sequence again and drew the
    earlier trials' values exactly. TPE keeps nothing between trials but its random state (it reads every
    trial from the storage), so a TPE per trial is the same search with that replay taken out."""

    class TrialSeeded(optuna.samplers.BaseSampler):
        def __init__(self):
            self.tpe = optuna.samplers.TPESampler(seed=seed)

        def before_trial(self, study, trial) -> None:
            self.tpe = optuna.samplers.TPESampler(seed=trial_seed(seed, trial.number))
            self.tpe.before_trial(study, trial)

        def infer_relative_search_space(self, study, trial):
            return self.tpe.infer_relative_search_space(study, trial)

        def sample_relative(self, study, trial, search_space):
            return self.tpe.sample_relative(study, trial, search_space)

        def sample_independent(self, study, trial, param_name, param_distribution):
            return self.tpe.sample_independent(study, trial, param_name, param_distribution)

        def after_trial(self, study, trial, state, values) -> None:
            self.tpe.after_trial(study, trial, state, values)

        def reseed_rng(self) -> None:
            self.tpe.reseed_rng()

    return TrialSeeded()


def worker_command(folder: str | Path, index: int | None = None) -> list[str]:
    """The command line of one worker of DIR's study: what --parallel starts here and a launcher starts anywhere
    (without --worker-index, a SLURM array task takes $SLURM_ARRAY_TASK_ID)."""
    return [sys.executable, "-m", "facetl", "tune", "--worker", str(folder),
            *(["--worker-index", str(index)] if index is not None else [])]


def worker_index(given: int | None) -> int:
    """Which worker this is (its trials record it; its log is workers/worker-K). The sampler is seeded per trial
    (trial_seed), so workers draw apart whatever their index."""
    if given is not None:
        return given
    task = os.environ.get("SLURM_ARRAY_TASK_ID", "")
    return int(task) if task.isdigit() else 0


def run_worker(folder: str | Path, index: int = 0, progress: bool = False, log=print, callbacks=()) -> int:
    """Run trials of DIR's study until it has its --trials (finished, pruned or running); returns how many this
    worker ran. An error in a trial marks it FAIL in the study and ends the worker with that error."""
    study = read_study(Path(folder).expanduser().resolve())
    optuna = optuna_module()
    loaded = open_study(study, sampler_seed=study.base.seed)
    ran = 0
    with terminate_as_interrupt():  # scancel, a time limit: the trial is marked FAIL now, not after 2 minutes
        while True:
            optuna.storages.fail_stale_trials(loaded)  # a killed worker's trial: no heartbeat, so FAIL now
            if len(counted_trials(loaded)) >= study.trials:
                break
            # one trial a call: optimize keeps the trial's heartbeat and marks it FAIL on an error (re-raised)
            made = []
            loaded.optimize(lambda trial: run_trial(study, trial, progress, log, callbacks, index), n_trials=1,
                            catch=(), callbacks=[lambda _, trial: made.append(trial)])
            if made[-1].user_attrs.get(SURPLUS):
                break  # another worker made the study's last trial between the count above and this one
            ran += 1
            write_results(study, loaded)
    return ran


def counted_trials(loaded) -> list:
    """The trials that count towards --trials: finished, pruned or running ones, not failed or surplus ones."""
    counted = tuple(getattr(optuna_module().trial.TrialState, s) for s in COUNTED)
    return [t for t in loaded.get_trials(deepcopy=False, states=counted) if not t.user_attrs.get(SURPLUS)]


def surplus(study: Study, trial) -> bool:
    """Whether `trial` came beyond --trials: workers that count at once each make one, so the trials made
    before it (by number) decide, the same way in every worker."""
    return sum(t.number < trial.number for t in counted_trials(trial.study)) >= study.trials


def run_trial(study: Study, trial, progress: bool, log, callbacks, worker: int = 0) -> float:
    """One trial: its values on the base config, trained as the run folder DIR/trial-NNN on the study's split;
    the objective is the selection metric (val loss by default) at the epoch the run selected."""
    from facetl.train.fit import fit

    if surplus(study, trial):  # ended before drawing values, so the sampler learns nothing from it
        trial.set_user_attr(SURPLUS, True)
        raise optuna_module().TrialPruned("the study has its --trials")
    values = {d.key: d.suggest(trial) for d in study.dimensions}
    folder = study.folder / f"trial-{trial.number:03d}"
    trial.set_user_attr("run", folder.name)
    trial.set_user_attr("worker", worker)  # which worker ran it (its log says more)
    log(f"trial {trial.number}: " + ", ".join(f"{k}={_shown(v)}" for k, v in values.items()) + f" -> {folder}")
    pruner = PruneTrial(trial, study.select)
    with shared_split(study, folder) as split_file:
        config = dataclasses.replace(build_config(values, study.base), out=str(folder), split_file=split_file)
        fit(config, progress=progress, callbacks=[pruner, *callbacks])
    value = selected_value(folder, study.select)
    if pruner.reason:
        log(f"trial {trial.number}: {pruner.reason}")
        raise optuna_module().TrialPruned(pruner.reason)
    log(f"trial {trial.number}: {metric(study.select).label} {value:.4f}")
    return value


@contextmanager
def shared_split(study: Study, folder: Path):
    """The split every trial uses (yields split_file): the base config's, else DIR/split.csv. The first trial
    makes it, holding a lock, so workers that start together wait for it rather than make splits of their own."""
    if study.base.split_file:
        yield study.base.split_file
        return
    split = study.folder / "split.csv"
    with open(study.folder / "split.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if split.is_file():
            fcntl.flock(lock, fcntl.LOCK_UN)
            yield str(split)
            return
        yield None
        for name in ("split.json", "split.csv"):  # split.csv last: its presence says the split is whole
            if (folder / name).is_file():
                shutil.copyfile(folder / name, study.folder / name)


def selected_value(folder: Path, key: str) -> float:
    """The run's `key` (val_loss, val_acc) at the epoch it selected (its best.pt), as the one reader reads it."""
    value = read_run(folder, folder.name)[key]
    if value is None:
        raise FacetlError(f"{folder}: no {metric(key).label} at its selected epoch (run.json or history.csv is "
                          "missing or damaged)")
    return value


def _shown(value) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def trial_rows(study: Study, loaded) -> list[dict]:
    """Every trial of the study: its state (COMPLETE, PRUNED, FAIL, RUNNING), values, and validation figures at
    the epoch its run selected (n/a for a damaged trial folder: the study's state still says what happened)."""
    rows = []
    for trial in loaded.get_trials(deepcopy=False):
        if trial.user_attrs.get(SURPLUS):
            continue
        run = study.folder / trial.user_attrs.get("run", f"trial-{trial.number:03d}")
        read = read_run(run, run.name) if (run / "run.json").is_file() else {}
        rows.append({"trial": trial.number, "state": trial.state.name,
                     **{d.key: trial.params.get(d.key) for d in study.dimensions},
                     "val_loss": read.get("val_loss"), "val_acc": read.get("val_acc"),
                     "epochs": read.get("epochs_run"), "run": run.name})
    return rows


def best_row(study: Study, rows: list[dict]) -> dict | None:
    """The best finished trial by the study's selection metric (the metric table's best_of); pruned, failed and
    running ones do not compete."""
    finished = [r if r["state"] == "COMPLETE" else {**r, study.select: None} for r in rows]
    best = best_of(finished, study.select)
    return rows[best] if best is not None else None


def write_results(study: Study, loaded) -> dict | None:
    """trials.csv, trials.md and best.yaml, rewritten whole after every trial (by whichever worker ran it)."""
    rows = trial_rows(study, loaded)
    best = best_row(study, rows)
    keys = list(rows[0]) if rows else ["trial", "state"]
    atomic_write_csv(study.folder / "trials.csv", keys + ["best"],
                     [[r[k] for k in keys] + [r is best] for r in rows])
    atomic_write_text(study.folder / "trials.md", trials_table(rows, best["trial"] if best else None, study.select))
    if best is None:
        return None
    run = study.folder / best["run"]
    values = load_yaml(run / "config.yaml")
    values.pop("out", None)  # the rerun's --out, or the default; never the trial's own folder
    if (study.folder / "split.csv").is_file():
        values["split_file"] = str(study.folder / "split.csv")  # the split the trial was scored on
    chosen = metric(study.select)
    header = (f"# facetl tune {study.folder}: the best trial, {run.name} ({chosen.label} "
              f"{best[study.select]:.4f}).\n# Rerun it: facetl train --config {study.folder / 'best.yaml'} --out NEW\n")
    atomic_write_text(study.folder / "best.yaml", header + yaml.safe_dump(values, sort_keys=False))
    return {"trial": best["trial"], "run": run, "metric": study.select, "value": best[study.select]}


def trials_table(rows: list[dict], best: int | None, select: str = "val_loss") -> str:
    if not rows:
        return "No trials yet.\n"
    keys = list(rows[0])
    cells = [[_cell(r[k]) for k in keys] for r in rows]
    for line, r in zip(cells, rows):
        if r["trial"] == best:
            line[0] = f"**{line[0]}** (best)"
    lines = markdown_table([k.replace("_", " ") for k in keys], cells)
    return "\n".join(lines + ["", f"val loss and val acc: at the epoch each run selected; 'best' is "
                                  f"{best_words(select)} of the finished trials. A PRUNED trial stopped early, its "
                                  "run.json says at which epoch and why.", ""])


def _cell(value) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.4f}" if 1e-3 <= abs(value) < 1e4 else f"{value:.3g}"
    return str(value)


def launch_workers(study: Study, launch: Launch, workers: int) -> list:
    """Start `workers` workers of the study through `launch.launcher` (the one path, whatever the launcher), say
    each trial as it ends, and wait for them all. Their job ids and states are kept in DIR/jobs.json; a worker
    that did not finish is one line naming its log."""
    launcher, log = launch.launcher, launch.log
    book = JobBook(study.folder / JOBS_FILE, meta={"workers": workers, "launcher": launcher.name})
    jobs = [Job(f"worker-{k}", worker_command(study.folder, k), study.folder / "workers" / f"worker-{k}",
                here=lambda k=k: run_worker(study.folder, k, launch.progress, log, launch.callbacks))
            for k in range(workers)]
    said: dict[str, str] = {}

    def changed(status) -> None:
        book.update(status)
        news = status.state != "running" or said.get(status.name) == "pending"  # running at once: no news
        said[status.name] = status.state
        if news and not launcher.in_this_process:
            log(f"{status.name}: {status.state} (job {status.job_id}"
                f"{'; ' + status.detail if status.detail else ''})")

    if not launcher.in_this_process:
        logs = launcher.logs()
        log(f"{workers} worker{'s' if workers > 1 else ''} ({launcher.name}) share the study; their logs: "
            f"{study.folder / 'workers'}" + (f" and {logs}" if logs else ""))
    with telling_trials(study, log) if not launcher.in_this_process else nullcontext():
        statuses = launcher.wait(launcher.launch(jobs, changed), changed)
    failed = [s for s in statuses if s.state != "finished"]
    if failed:
        first = failed[0]
        raise FacetlError(f"{first.name} {first.state} ({first.detail or 'no detail'}): "
                          f"{_last_line(Path(first.log))} (see {first.log})")
    return statuses


@contextmanager
def telling_trials(study: Study, log):
    """While the workers run (elsewhere), say each trial of the study as it ends, from a thread here."""
    import threading

    loaded, said, stop = open_study(study), set(), threading.Event()

    def follow() -> None:
        while not stop.wait(2):
            said.update(_say_finished(loaded, said, log))

    thread = threading.Thread(target=follow, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        _say_finished(loaded, said, log)


def _say_finished(loaded, said: set, log) -> set:
    done = set()
    for trial in loaded.get_trials(deepcopy=False):
        if trial.state.is_finished() and trial.number not in said and not trial.user_attrs.get(SURPLUS):
            value = "" if trial.value is None else f", val loss {trial.value:.4f}"
            log(f"trial {trial.number}: {trial.state.name}{value}")
            done.add(trial.number)
    return done


def _last_line(path: Path) -> str:
    """A failed worker's last words: its log's last line (submitit keeps stderr apart, in the .err beside it)."""
    lines = []
    for log in (path.with_suffix(".err"), path) if path.suffix == ".out" else (path,):
        if log.is_file():
            lines += [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
    return lines[-1][:200] if lines else "no output"


def tune(base: TrainConfig, search: Search, out: str | Path, launch: Launch | None = None, workers: int = 1
         ) -> dict | None:
    """Start or continue DIR's study, run its trials in `workers` workers through `launch` (one worker in this
    process by default), and write trials.csv, trials.md and best.yaml. Returns the best trial (None when no
    trial finished)."""
    study = start_study(base, search, out)
    launch_workers(study, launch or Launch(), workers)
    return write_results(study, open_study(study))
