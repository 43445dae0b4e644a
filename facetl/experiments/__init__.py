"""Experiments: many runs, over one `Trial` (name, config, folder) and one way to run trials.

- trial.py: a Trial and the job that trains it; run.py: `run_trials(trials, book, Launch(...))`, the one path every
  experiment takes, whatever the launcher.
- launcher.py: the Launcher protocol and registry; inprocess.py, local.py, slurm.py: the launchers, one file each
  (its flags, its checks, its job ids); launchers.py: imports them (one line each) and turns flags into one.
- jobs.py: Job, JobStatus and JobBook (an experiment's jobs.json).
- grid.py and sweep.py: a grid of points on one split; folds.py: K-fold cross-validation; tune.py: an Optuna search
  whose workers any launcher starts.
- results.py: the one reader that turns a run folder into a row; tables.py: the results tables; runs.py: the
  `facetl runs` listing. "Best" is the metric table's (facetl.evaluate.metrics.best_of).
"""
