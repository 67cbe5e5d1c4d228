#!/usr/bin/env python3
"""A single-node SLURM cluster on this machine, for testing `profiles/slurm` (CI or workstation).

    scripts/slurm/cluster.py up [--clear-state] [--no-install] [--timeout SECONDS]
    scripts/slurm/cluster.py down
    scripts/slurm/cluster.py status

`up` installs Debian's slurm-wlm if `sbatch`/`slurmctld` are missing, writes munge's key and
/etc/slurm/{slurm,cgroup,gres}.conf (one node = this machine: its CPUs, 80 % of its RAM, one fake
GPU on /dev/null so `gpu=1` jobs are scheduled and see CUDA_VISIBLE_DEVICES), starts munged,
slurmctld and slurmd, and waits until `sinfo` reports the node idle. Running it again is a no-op
(daemons whose configuration changed are restarted). `down` cancels this cluster's jobs and stops
every daemon by the PID in its pidfile. `status` exits 0 when all three daemons run.

Needs root (it writes /etc and starts system daemons). Exit codes: 0 ok, 1 failure, 3 SLURM is
unavailable here (not root, or the packages cannot be installed) - callers such as
tests/test_slurm.py skip on 3. Standard library only, so it runs with any python3.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

UNAVAILABLE = 3

SLURM_ETC = Path("/etc/slurm")
MUNGE_KEY = Path("/etc/munge/munge.key")
RUN_MUNGE = Path("/run/munge")
RUN_SLURM = Path("/run/slurm")
SPOOL_CTLD = Path("/var/spool/slurmctld")
SPOOL_D = Path("/var/spool/slurmd")
LOG_DIR = Path("/var/log/slurm")
SBIN = Path("/usr/sbin")


class Unavailable(Exception):
    """SLURM cannot be provided on this machine (exit code 3)."""


@dataclass(frozen=True)
class Daemon:
    name: str
    pidfile: Path
    logfile: Path | None

    def pid(self) -> int | None:
        """The PID in the pidfile if that process is alive and really is this daemon."""
        try:
            pid = int(self.pidfile.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None
        try:
            comm = Path(f"/proc/{pid}/comm").read_text().strip()
        except OSError:
            return None
        return pid if comm == self.name[:15] else None


MUNGED = Daemon("munged", RUN_MUNGE / "munged.pid", Path("/var/log/munge/munged.log"))
SLURMCTLD = Daemon("slurmctld", RUN_SLURM / "slurmctld.pid", LOG_DIR / "slurmctld.log")
SLURMD = Daemon("slurmd", RUN_SLURM / "slurmd.pid", LOG_DIR / "slurmd.log")
DAEMONS = (MUNGED, SLURMCTLD, SLURMD)


def log(message: str) -> None:
    print(f"slurm-cluster: {message}", flush=True)


def run(cmd: list[str], check: bool = True, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=check, text=True, capture_output=True, **kwargs)


# --------------------------------------------------------------------------- machine facts


def short_hostname() -> str:
    try:
        name = run(["hostname", "-s"]).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        name = ""
    return name or os.uname().nodename.split(".")[0]


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - non-Linux
        return os.cpu_count() or 1


def memory_mb() -> int:
    """80 % of MemTotal, in MB: what the node offers to jobs."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(int(line.split()[1]) / 1024 * 0.8)
    raise RuntimeError("MemTotal missing from /proc/meminfo")


# --------------------------------------------------------------------------- configuration


def cgroup_v1() -> bool:
    """Are the cgroup v1 controllers that proctrack/cgroup and task/cgroup use mounted?"""
    return all(Path("/sys/fs/cgroup", c).is_dir() for c in ("freezer", "memory", "cpuset"))


def slurm_conf(host: str, cpus: int, mem_mb: int, cgroup: bool = True) -> str:
    # Without cgroup v1 (e.g. a cgroup v2-only host) fall back to process-tree tracking and no
    # task confinement: jobs still run, memory limits are then not enforced.
    proctrack, task = ("cgroup", "cgroup") if cgroup else ("linuxproc", "none")
    return f"""\
# Written by scripts/slurm/cluster.py: a single-node test cluster on {host}. Do not edit.
ClusterName=ci
SlurmctldHost={host}(127.0.0.1)
SlurmUser=root
AuthType=auth/munge
ProctrackType=proctrack/{proctrack}
TaskPlugin=task/{task}
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
MinJobAge=600
KillWait=10
StateSaveLocation={SPOOL_CTLD}
SlurmdSpoolDir={SPOOL_D}
SlurmctldPidFile={SLURMCTLD.pidfile}
SlurmdPidFile={SLURMD.pidfile}
SlurmctldLogFile={SLURMCTLD.logfile}
SlurmdLogFile={SLURMD.logfile}
GresTypes=gpu
NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={mem_mb} Gres=gpu:1 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
"""


CGROUP_CONF = """\
# Written by scripts/slurm/cluster.py.
CgroupPlugin=cgroup/v1
ConstrainCores=yes
ConstrainRAMSpace=yes
ConstrainDevices=no
"""


def gres_conf(host: str) -> str:
    # A fake GPU: without File= the node goes INVAL; with it jobs get CUDA_VISIBLE_DEVICES=0.
    return f"""\
# Written by scripts/slurm/cluster.py: one fake GPU so gpu=1 jobs are scheduled (serialised).
AutoDetect=off
NodeName={host} Name=gpu File=/dev/null
"""


def write_if_changed(path: Path, text: str) -> bool:
    if path.exists() and path.read_text() == text:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.chmod(0o644)
    tmp.replace(path)
    log(f"wrote {path}")
    return True


def write_configs() -> bool:
    host = short_hostname()
    conf = slurm_conf(host, cpu_count(), memory_mb(), cgroup=cgroup_v1())
    changed = write_if_changed(SLURM_ETC / "slurm.conf", conf)
    changed |= write_if_changed(SLURM_ETC / "cgroup.conf", CGROUP_CONF)
    changed |= write_if_changed(SLURM_ETC / "gres.conf", gres_conf(host))
    return changed


# --------------------------------------------------------------------------- installation


def have_slurm() -> bool:
    return all(
        shutil.which(tool) or (SBIN / tool).exists()
        for tool in ("sbatch", "squeue", "sinfo", "scancel", "slurmctld", "slurmd", "munged")
    )


def ensure_installed(allow_install: bool) -> None:
    if have_slurm():
        return
    if not allow_install:
        raise Unavailable("slurm-wlm is not installed and --no-install was given")
    if not shutil.which("apt-get"):
        raise Unavailable("slurm-wlm is not installed and there is no apt-get to install it")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    install = ["apt-get", "install", "-y", "--no-install-recommends", "slurm-wlm"]
    log("installing slurm-wlm (apt-get)")
    if run(install, check=False, env=env).returncode != 0:
        # Package lists may be missing or stale on a fresh machine.
        run(["apt-get", "update"], check=False, env=env)
        result = run(install, check=False, env=env)
        if result.returncode != 0:
            tail = "\n".join(result.stderr.strip().splitlines()[-5:])
            raise Unavailable(f"apt-get could not install slurm-wlm (no Debian mirror?):\n{tail}")
    if not have_slurm():
        raise Unavailable("slurm-wlm was installed but sbatch/slurmctld/munged are still missing")


# --------------------------------------------------------------------------- daemons


def wait_for(predicate, timeout: float, interval: float = 0.25) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)


def log_tail(daemon: Daemon, lines: int = 15) -> str:
    if daemon.logfile is None or not daemon.logfile.exists():
        return ""
    text = daemon.logfile.read_text(errors="replace").splitlines()[-lines:]
    return f"\n--- last lines of {daemon.logfile}:\n" + "\n".join(text)


def start(daemon: Daemon, cmd: list[str]) -> None:
    if daemon.pid() is not None:
        return
    daemon.pidfile.unlink(missing_ok=True)
    result = run(cmd, check=False)
    if result.returncode != 0 or not wait_for(lambda: daemon.pid() is not None, 20):
        raise RuntimeError(
            f"{daemon.name} did not start (exit {result.returncode}): {result.stderr.strip()}"
            + log_tail(daemon)
        )
    log(f"started {daemon.name} (pid {daemon.pid()})")


def stop(daemon: Daemon, timeout: float = 20) -> None:
    pid = daemon.pid()
    if pid is None:
        daemon.pidfile.unlink(missing_ok=True)
        return
    os.kill(pid, signal.SIGTERM)
    if not wait_for(lambda: not Path(f"/proc/{pid}").exists(), timeout):
        log(f"{daemon.name} (pid {pid}) ignored SIGTERM for {timeout:.0f} s; sending SIGKILL")
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: not Path(f"/proc/{pid}").exists(), 5)
    daemon.pidfile.unlink(missing_ok=True)
    log(f"stopped {daemon.name} (pid {pid})")


def munge_works() -> bool:
    cred = run(["munge", "-n"], check=False)
    return cred.returncode == 0 and run(["unmunge"], input=cred.stdout, check=False).returncode == 0


def start_munge() -> None:
    if not MUNGE_KEY.exists():
        run(["mungekey", "--create", "--keyfile", str(MUNGE_KEY)])
    shutil.chown(MUNGE_KEY, "munge", "munge")
    MUNGE_KEY.chmod(0o400)
    run(["install", "-d", "-o", "munge", "-g", "munge", "-m", "0755", str(RUN_MUNGE)])
    start(MUNGED, ["runuser", "-u", "munge", "--", str(SBIN / "munged")])
    if not wait_for(munge_works, 10):
        raise RuntimeError("munge -n | unmunge fails although munged runs" + log_tail(MUNGED))


def node_state() -> str:
    result = run(["sinfo", "-h", "-o", "%T"], check=False)
    return result.stdout.strip() if result.returncode == 0 else ""


def wait_idle(timeout: float) -> None:
    host = short_hostname()
    resumed = False
    deadline = time.monotonic() + timeout
    state = ""
    while time.monotonic() < deadline:
        state = node_state()
        # "idle", or "mixed"/"allocated" when jobs already run: the node serves jobs.
        if state.rstrip("*") in {"idle", "mixed", "allocated", "completing"}:
            log(f"node {host} is {state}")
            return
        if not resumed and any(s in state for s in ("drain", "down", "inval", "fail")):
            # Left over from an unclean stop: ReturnToService=2 usually handles it, else resume.
            run(["scontrol", "update", f"NodeName={host}", "State=RESUME"], check=False)
            resumed = True
        time.sleep(0.5)
    raise RuntimeError(
        f"node {host} not idle after {timeout:.0f} s (sinfo: {state or 'no answer'})"
        + log_tail(SLURMCTLD)
        + log_tail(SLURMD)
    )


def cancel_jobs(timeout: float = 30) -> None:
    """Cancel every job of this (single-node, test) cluster and wait until none is running."""
    if SLURMCTLD.pid() is None:
        return
    ids = run(["squeue", "-h", "-o", "%i"], check=False).stdout.split()
    if not ids:
        return
    log(f"cancelling jobs {' '.join(ids)}")
    run(["scancel", *ids], check=False)

    def none_left() -> bool:
        states = run(["squeue", "-h", "-o", "%T"], check=False).stdout.split()
        return not [s for s in states if s not in {"COMPLETED", "CANCELLED", "FAILED"}]

    wait_for(none_left, timeout, 0.5)


# --------------------------------------------------------------------------- commands


def up(args: argparse.Namespace) -> None:
    if os.geteuid() != 0:
        raise Unavailable("needs root (writes /etc/slurm and starts system daemons)")
    ensure_installed(not args.no_install)
    changed = write_configs()
    for directory in (RUN_SLURM, SPOOL_CTLD, SPOOL_D, LOG_DIR):
        directory.mkdir(parents=True, exist_ok=True)
    start_munge()
    if changed and (SLURMCTLD.pid() or SLURMD.pid()):
        log("configuration changed: restarting slurmctld and slurmd")
        stop(SLURMD)
        stop(SLURMCTLD)
    ctld = [str(SBIN / "slurmctld")] + (["-c"] if args.clear_state else [])
    start(SLURMCTLD, ctld)
    start(SLURMD, [str(SBIN / "slurmd")])
    wait_idle(args.timeout)


def down(_: argparse.Namespace) -> None:
    cancel_jobs()
    for daemon in (SLURMD, SLURMCTLD, MUNGED):
        stop(daemon)


def status(_: argparse.Namespace) -> int:
    missing = [d.name for d in DAEMONS if d.pid() is None]
    for daemon in DAEMONS:
        pid = daemon.pid()
        log(f"{daemon.name}: {'running, pid ' + str(pid) if pid else 'not running'}")
    if not missing:
        log(f"sinfo: {node_state() or 'no answer'}")
    return 0 if not missing else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_up = sub.add_parser("up", help="install if needed, configure, start, wait for idle")
    p_up.add_argument("--clear-state", action="store_true", help="start slurmctld with -c")
    p_up.add_argument("--no-install", action="store_true", help="never call apt-get")
    p_up.add_argument("--timeout", type=float, default=60, help="seconds to wait for idle")
    sub.add_parser("down", help="cancel jobs, stop slurmd, slurmctld, munged by pidfile")
    sub.add_parser("status", help="exit 0 if munged, slurmctld and slurmd run")
    args = parser.parse_args(argv)
    try:
        if args.command == "up":
            up(args)
        elif args.command == "down":
            down(args)
        else:
            return status(args)
    except Unavailable as err:
        log(f"unavailable: {err}")
        return UNAVAILABLE
    except (RuntimeError, subprocess.CalledProcessError, OSError) as err:
        detail = getattr(err, "stderr", None) or ""
        log(f"error: {err} {detail}".strip())
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
