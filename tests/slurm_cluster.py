"""A real single-node SLURM on loopback, for tests only: Debian's munge and slurm-wlm (installed by
scripts/setup_env.sh), started in a temporary folder with their own key, sockets, ports, state and
logs, and stopped afterwards. Nothing outside that folder is written; nothing is reachable from
outside the machine (the daemons listen on free ports, the node's address is 127.0.0.1)."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd", "sbatch", "sinfo")


def missing_programs() -> list[str]:
    return [p for p in DAEMONS if not (shutil.which(p) or Path("/usr/sbin", p).exists())]


def _program(name: str) -> str:
    return shutil.which(name) or str(Path("/usr/sbin", name))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _conf(root: Path, host: str) -> str:
    ctl, node = _free_port(), _free_port()
    return f"""ClusterName=kit
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ctl}
SlurmdPort={node}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={root}/munge.socket
CredType=cred/munge
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
JobCompType=jobcomp/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
NodeName={host} NodeAddr=127.0.0.1 CPUs={os.cpu_count() or 1} State=UNKNOWN
PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP
"""


class SlurmCluster:
    """``start()`` brings munged, slurmctld and slurmd up and waits for the node to be idle;
    ``env`` holds SLURM_CONF for the clients; ``stop()`` ends the daemons."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.conf = self.root / "slurm.conf"
        self.env = {"SLURM_CONF": str(self.conf)}

    def start(self, timeout: float = 60.0) -> "SlurmCluster":
        r = self.root
        for d in ("state", "spool"):
            (r / d).mkdir(parents=True, exist_ok=True)
        key = r / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        subprocess.run([_program("munged"), f"--key-file={key}", f"--socket={r}/munge.socket",
                        f"--pid-file={r}/munged.pid", f"--log-file={r}/munged.log", f"--seed-file={r}/munge.seed",
                        "--force"], check=True, capture_output=True)
        host = socket.gethostname().split(".")[0]
        self.conf.write_text(_conf(r, host))
        env = {**os.environ, **self.env}
        subprocess.run([_program("slurmctld"), "-f", str(self.conf)], check=True, env=env, capture_output=True)
        subprocess.run([_program("slurmd"), "-f", str(self.conf)], check=True, env=env, capture_output=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = subprocess.run([_program("sinfo"), "-h", "-o", "%t"], env=env, capture_output=True, text=True)
            if state.stdout.strip() == "idle":
                return self
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"the test SLURM did not come up in {timeout:.0f} s; logs in {r}")

    def stop(self) -> None:
        for name in ("slurmd", "slurmctld", "munged"):
            pid_file = self.root / f"{name}.pid"
            try:
                os.kill(int(pid_file.read_text().split()[0]), signal.SIGTERM)
            except (OSError, ValueError):
                pass
