"""The SLURM scripts on a real one-node cluster (Debian's slurm-wlm and munge, started here as
../shared/SLURM.md shows, stopped afterwards): the segmentation array writes every case exactly
once, and the training scripts (prepare, then a 2-task array with train/smoke.toml) train and
bundle. Marked `slurm` (minutes; installs packages, needs root); run by name in .ci/run.

The scripts ask for GPUs; this node has none, so each submission overrides the request
(`--gpus-per-node=0`) and the scripts take the GPU count from SLURM's environment."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SLURM = ROOT / "train" / "slurm"
pytestmark = pytest.mark.slurm


def _stop(pid_file: Path) -> None:
    """End one daemon this test started, by the PID it wrote, never by name."""
    try:
        pid = int(pid_file.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    for _ in range(50):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> Iterator[dict[str, str]]:
    """A one-node SLURM cluster in a scratch folder; the environment to submit with."""
    if os.geteuid() != 0:
        pytest.skip("the one-node SLURM cluster runs its daemons as root")
    if shutil.which("slurmctld") is None or shutil.which("munged") is None:
        subprocess.run(["apt-get", "update", "-qq"], check=True, timeout=600)
        subprocess.run(["apt-get", "install", "-y", "-qq", "slurm-wlm", "munge"], check=True, timeout=900,
                       env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})  # fmt: skip
    state = tmp_path_factory.mktemp("slurm")
    host = socket.gethostname().split(".")[0]
    cpus = os.cpu_count() or 2
    conf = state / "slurm.conf"
    conf.write_text(
        f"ClusterName=local\nSlurmctldHost={host}\nSlurmUser=root\nAuthType=auth/munge\n"
        f"StateSaveLocation={state}/state\nSlurmdSpoolDir={state}/spool\n"
        f"SlurmctldPidFile={state}/slurmctld.pid\nSlurmdPidFile={state}/slurmd.pid\n"
        f"SlurmctldLogFile={state}/ctld.log\nSlurmdLogFile={state}/d.log\n"
        "ProctrackType=proctrack/linuxproc\nTaskPlugin=task/none\nJobAcctGatherType=jobacct_gather/none\n"
        "SelectType=select/cons_tres\nSelectTypeParameters=CR_Core_Memory\nReturnToService=2\n"
        f"NodeName={host} CPUs={cpus} RealMemory=20000 State=UNKNOWN\n"
        f"PartitionName=cpu Nodes={host} Default=YES MaxTime=INFINITE State=UP\n"
    )
    for folder in (state / "state", state / "spool", Path("/etc/munge"), Path("/run/munge"), Path("/var/log/munge")):
        folder.mkdir(parents=True, exist_ok=True)
    key = Path("/etc/munge/munge.key")
    if not key.exists():
        key.write_bytes(os.urandom(1024))
    subprocess.run(["chown", "-R", "munge:munge", "/etc/munge", "/run/munge", "/var/log/munge"], check=True)
    key.chmod(0o400)
    munge_pid = Path("/run/munge/munged.pid")
    started_munge = not (munge_pid.exists() and Path(f"/proc/{munge_pid.read_text().strip()}").exists())
    if started_munge:
        subprocess.run(["munged", "--force"], check=True, timeout=60)
    environ = {**os.environ, "SLURM_CONF": str(conf), "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    subprocess.run(["slurmctld", "-f", str(conf)], check=True, env=environ, timeout=60)
    subprocess.run(["slurmd", "-f", str(conf)], check=True, env=environ, timeout=60)
    try:
        for _ in range(60):
            info = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, env=environ)
            if info.stdout.strip() in ("idle", "mix", "alloc"):
                break
            time.sleep(1)
        else:
            pytest.fail(f"the SLURM node did not come up: {info.stdout} {info.stderr}")
        yield environ
    finally:
        _stop(state / "slurmd.pid")
        _stop(state / "slurmctld.pid")
        if started_munge:
            _stop(munge_pid)


def _sbatch(environ: dict[str, str], script: Path, *options: str, **variables: str) -> str:
    """Submit from the repository root and wait for the job (every task of an array) to end."""
    result = subprocess.run(
        ["sbatch", "--parsable", "--wait", "--gpus-per-node=0", *options, str(script)],
        capture_output=True, text=True, timeout=3600, cwd=ROOT, env={**environ, **variables},
    )  # fmt: skip
    assert result.returncode == 0, f"{script.name}: {result.stdout}{result.stderr}"
    return result.stdout.strip().split(";")[0]


def _phantoms(folder: Path, n: int, seed: int) -> Path:
    result = subprocess.run([sys.executable, "-m", "brats_cli", "synth", str(folder), "--n", str(n), "--seed",
                             str(seed)], capture_output=True, text=True, timeout=900)  # fmt: skip
    assert result.returncode == 0, result.stderr
    return folder


def test_segment_array_writes_every_case_once(cluster: dict[str, str], tmp_path: Path) -> None:
    cases = _phantoms(tmp_path / "cohort", 4, 5)
    ids = sorted(p.name for p in cases.iterdir())
    out = tmp_path / "predictions"
    job = _sbatch(cluster, SLURM / "segment-array.sbatch", "--array=0-1", "--cpus-per-task=1", "--mem=4G",
                  f"--output={tmp_path}/%x-%A_%a.out", INPUT=str(cases), OUTPUT=str(out))  # fmt: skip

    assert sorted(p.name for p in out.iterdir()) == [f"{case_id}.nii.gz" for case_id in ids]  # nothing else
    logs = sorted((tmp_path / "predictions-logs").iterdir())
    assert [log.name for log in logs] == [f"segment-{job}_0.log", f"segment-{job}_1.log"]
    written = []
    for task, log in enumerate(logs):
        text = log.read_text()
        assert f"shard {task}/2 (SLURM array job {job}, task {task} of 0-1): 2 of 4 case(s)" in text
        assert "device cpu" in text and " error: " not in text
        written.append({m for m in re.findall(r" done: (\S+) ", text)})
    assert written[0] | written[1] == set(ids) and not written[0] & written[1]
    assert written[0] == set(ids[0::2])  # every second case by sorted ID, from the first


def test_training_scripts_train_and_bundle_under_sbatch(cluster: dict[str, str], tmp_path: Path) -> None:
    data = _phantoms(tmp_path / "training", 6, 9)  # train/smoke.toml has 5 folds
    run = tmp_path / "run"
    variables = {"DATA": str(data), "RUN": str(run), "RECIPE": str(ROOT / "train" / "smoke.toml")}
    logs = f"--output={tmp_path}/%x-%A_%a.out"
    _sbatch(cluster, SLURM / "prepare.sbatch", "--cpus-per-task=2", "--mem=8G", logs, **variables)
    assert (run / "folds.json").is_file()
    _sbatch(cluster, SLURM / "one-node.sbatch", "--array=0-1", "--cpus-per-task=1", "--mem=6G", logs,
            ARRAY="folds", **variables)  # fmt: skip
    for stage in ("base", "wt", "tc", "et"):
        for fold in (0, 1):
            assert (run / stage / f"fold{fold}" / "best.pt").is_file(), f"{stage} fold {fold} not trained"

    bundle = tmp_path / "bundle"
    result = subprocess.run([sys.executable, "-m", "brats_cli", "bundle", str(run), "--out", str(bundle)],
                            capture_output=True, text=True, timeout=600)  # fmt: skip
    assert result.returncode == 0, result.stderr
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert {stage: len(spec["folds"]) for stage, spec in manifest["stages"].items()} == {
        "base": 2, "wt": 2, "tc": 2, "et": 2}  # fmt: skip
