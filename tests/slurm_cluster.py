"""A real single-node SLURM cluster for the tests: munged, slurmctld and slurmd from Debian's slurm-wlm and
munge, started as this user with a temporary slurm.conf (this host as the one node, no cgroups, no
accounting database), state, spool, logs and the munge socket all under one temporary folder.

    cluster = SlurmCluster(folder); cluster.start()   # raises ClusterUnavailable(reason) when it cannot
    env = cluster.env()                                 # SLURM_CONF for sbatch, squeue, scancel, submitit
    ...; cluster.stop()

Finished jobs are listed by jobcomp/filetxt in folder/jobcomp.txt (JobId, JobState, ...): `sacct` needs
slurmdbd, which a test cluster does without. Also runnable by hand: `python tests/slurm_cluster.py` starts
one, runs a 4-task array and prints squeue and the job completion log.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd", "sbatch", "sinfo", "squeue", "scancel")


class ClusterUnavailable(RuntimeError):
    """Why a cluster could not start here (a test skips with this reason)."""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _find(program: str) -> str | None:
    return shutil.which(program) or shutil.which(program, path="/usr/sbin:/usr/bin:/sbin:/bin")


class SlurmCluster:
    def __init__(self, folder: Path, cpus: int | None = None):
        self.folder = Path(folder)
        self.cpus = cpus or os.cpu_count() or 1
        self.host = socket.gethostname().split(".")[0]
        self.processes: list[subprocess.Popen] = []
        self.conf = self.folder / "slurm.conf"
        self.munge_socket = self.folder / "munge" / "munge.socket"

    def env(self) -> dict[str, str]:
        return dict(os.environ, SLURM_CONF=str(self.conf))

    def start(self, timeout: float = 90) -> "SlurmCluster":
        missing = [p for p in DAEMONS if _find(p) is None]
        if missing:
            raise ClusterUnavailable(f"not installed: {', '.join(missing)} (apt-get install slurm-wlm munge)")
        for sub in ("munge", "state", "spool", "log"):
            (self.folder / sub).mkdir(parents=True, exist_ok=True)
        os.chmod(self.folder / "munge", 0o700)  # munged refuses a socket or key in a folder others can write
        try:
            self._start_munge()
            self._write_conf()
            for daemon in ("slurmctld", "slurmd"):
                # -D: stay in the foreground, so stop() ends exactly the processes started here
                self.processes.append(subprocess.Popen([_find(daemon), "-D", "-f", str(self.conf)], env=self.env(),
                                                       stdout=subprocess.DEVNULL, stderr=open(
                                                           self.folder / "log" / f"{daemon}.out", "wb")))
            self._wait_idle(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _start_munge(self) -> None:
        key = self.folder / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        os.chmod(key, 0o400)
        munge = self.folder / "munge"
        self.processes.append(subprocess.Popen(
            [_find("munged"), "--foreground", "--force", f"--socket={self.munge_socket}", f"--key-file={key}",
             f"--log-file={munge / 'munged.log'}", f"--pid-file={munge / 'munged.pid'}",
             f"--seed-file={munge / 'munged.seed'}"], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT))
        deadline = time.monotonic() + 15
        while not self.munge_socket.exists():
            if self.processes[-1].poll() is not None or time.monotonic() > deadline:
                raise ClusterUnavailable(f"munged did not start: {self._tail(munge / 'munged.log')}")
            time.sleep(0.1)

    def _write_conf(self) -> None:
        f, user = self.folder, _user()
        self.conf.write_text(f"""\
ClusterName=facetltest
SlurmctldHost={self.host}
SlurmUser={user}
SlurmdUser={user}
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={self.munge_socket}
StateSaveLocation={f / 'state'}
SlurmdSpoolDir={f / 'spool'}
SlurmctldPidFile={f / 'slurmctld.pid'}
SlurmdPidFile={f / 'slurmd.pid'}
SlurmctldLogFile={f / 'log' / 'slurmctld.log'}
SlurmdLogFile={f / 'log' / 'slurmd.log'}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc={f / 'jobcomp.txt'}
MpiDefault=none
ReturnToService=2
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
KillWait=5
MinJobAge=300
NodeName={self.host} CPUs={self.cpus} State=UNKNOWN
PartitionName=debug Nodes={self.host} Default=YES MaxTime=INFINITE State=UP
""")

    def _wait_idle(self, timeout: float) -> None:
        deadline, answer = time.monotonic() + timeout, ""
        while time.monotonic() < deadline:
            for process, daemon in zip(self.processes[1:], ("slurmctld", "slurmd")):
                if process.poll() is not None:
                    raise ClusterUnavailable(f"{daemon} exited: {self._tail(self.folder / 'log' / f'{daemon}.log')}"
                                             f" {self._tail(self.folder / 'log' / f'{daemon}.out')}")
            answer = subprocess.run([_find("sinfo"), "-h", "-N", "-o", "%T"], env=self.env(), capture_output=True,
                                    text=True).stdout.strip()
            if answer == "idle":
                return
            time.sleep(0.5)
        raise ClusterUnavailable(f"the node was not idle within {timeout:.0f} s (sinfo: {answer!r}); "
                                 f"{self._tail(self.folder / 'log' / 'slurmctld.log')}")

    def squeue(self) -> str:
        return subprocess.run([_find("squeue"), "-a", "-o", "%i %j %T %M %R"], env=self.env(), capture_output=True,
                              text=True).stdout

    def completed(self) -> str:
        """The job completion log: one line per finished job, with its JobState."""
        path = self.folder / "jobcomp.txt"
        return path.read_text() if path.exists() else ""

    def stop(self) -> None:
        for process in reversed(self.processes):  # slurmd, slurmctld, then munged (the others need it)
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
        self.processes.clear()

    @staticmethod
    def _tail(path: Path, lines: int = 3) -> str:
        return " | ".join(path.read_text(errors="replace").strip().splitlines()[-lines:]) if path.exists() else ""


def _user() -> str:
    import pwd

    return pwd.getpwuid(os.getuid()).pw_name


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        began = time.monotonic()
        cluster = SlurmCluster(Path(tmp)).start()
        print(f"cluster up in {time.monotonic() - began:.1f} s")
        try:
            print(subprocess.run(["sbatch", "--array=0-3", "-o", f"{tmp}/%A_%a.out", "--wrap", "hostname; sleep 1"],
                                 env=cluster.env(), capture_output=True, text=True))
            time.sleep(2)
            print(cluster.squeue())
            time.sleep(8)
            print(cluster.completed())
        finally:
            cluster.stop()
        sys.exit(0)
