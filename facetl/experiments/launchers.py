"""The launchers there are, and the flags that choose one: `--launcher NAME`, `--parallel N`, and each launcher's
own flags (its add_arguments).

Importing the launcher files here fills the registry (launcher.py), as models/factory.py imports the backbones:
adding a launcher is its file and one line below.
"""
from __future__ import annotations

from pathlib import Path

from facetl.errors import FacetlError
from facetl.experiments import inprocess, local, slurm  # noqa: F401  (each registers itself)
from facetl.experiments.launcher import Launcher, registered
from facetl.flags import whole_number


def add_launcher_flags(parser, title: str, what: str, parallel_help: str):
    """--launcher and --parallel in a --help group `title` (returned, for the command's own job flags), and each
    launcher's own flags in its own group: sweep's (a job per point), tune's (a job per worker)."""
    names = list(registered())
    default = next(name for name, cls in registered().items() if cls.default)
    group = parser.add_argument_group(title)
    group.add_argument("--launcher", choices=names,
                       help=f"{what}: {', '.join(names)} (default: {default}, unless --parallel asks for more)")
    group.add_argument("--parallel", type=whole_number(1, 1024), metavar="N", help=parallel_help)
    for cls in registered().values():
        cls.add_arguments(parser)
    return group


def launcher_from_flags(args, out: Path) -> Launcher:
    """The launcher --launcher names, else the one other flags imply (--parallel 2: processes here), else the
    default; checked, so bad launcher flags are one line before anything is made."""
    launchers = registered()
    if args.launcher:
        chosen = launchers[args.launcher]
    else:
        chosen = next((cls for cls in launchers.values() if cls.implied_by(args)), None) or \
            next(cls for cls in launchers.values() if cls.default)
    if getattr(args, "detach", False) and not chosen.detaches:
        can = ", ".join(name for name, cls in launchers.items() if cls.detaches)
        raise FacetlError(f"--detach is for a launcher whose jobs outlive this command (--launcher {can}); "
                          f"{chosen.name} jobs end with it")
    return chosen.from_args(args, Path(out))


def observer_of(job_id: str) -> Launcher | None:
    """A launcher that can tell the state of job `job_id` from this process (None: only its own launcher can)."""
    owner = next((cls for cls in registered().values() if cls.owns(job_id)), None)
    return owner.observer() if owner is not None else None


def owned_by(launcher: Launcher, job_id: str) -> bool:
    return type(launcher).owns(job_id)
