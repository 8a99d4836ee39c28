"""Launchers: the same jaxllm command on N local processes, a SLURM batch script, a Cloud TPU pod
command, or a Kubernetes indexed Job. Every worker runs `python -m jaxllm.cli.launch worker -- ARGS`,
which joins JAX's distributed runtime (jaxllm.parallel.distributed.initialize) and then runs
`jaxllm ARGS` (e.g. `run experiments/gpt2_1p5b.py --run-dir runs/gpt2`). See docs/scale.md.
"""
from __future__ import annotations

import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Sequence

from jaxllm.parallel.distributed import ENV_COORDINATOR, ENV_NUM_PROCESSES, ENV_PROCESS_ID

WORKER = ("python", "-m", "jaxllm.cli.launch", "worker", "--")


def worker_command(args: Sequence[str], python: str = "python") -> list[str]:
    """The per-worker command line for `jaxllm ARGS`."""
    return [python, *WORKER[1:], *args]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def local_env(process_id: int, processes: int, port: int, devices: int | None,
              base: dict | None = None) -> dict:
    """Environment of local process `process_id`: coordinator on 127.0.0.1, M fake CPU devices."""
    env = dict(os.environ if base is None else base)
    env.update({ENV_COORDINATOR: f"127.0.0.1:{port}", ENV_NUM_PROCESSES: str(processes),
                ENV_PROCESS_ID: str(process_id)})
    if devices:
        flags = re.sub(r"--xla_force_host_platform_device_count=\d+", "", env.get("XLA_FLAGS", "")).strip()
        env["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={devices}".strip()
        env["JAX_PLATFORMS"] = "cpu"
    return env


def _pump(stream, prefix: str, out, lines: list) -> None:
    for line in iter(stream.readline, ""):
        lines.append(line)
        out.write(f"{prefix}{line}")
        out.flush()
    stream.close()


def describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


def _kill_group(proc: subprocess.Popen, sig=signal.SIGTERM) -> None:
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def launch_local(command: Sequence[str], processes: int, devices: int | None = None, port: int | None = None,
                 grace_s: float = 60.0, timeout_s: float | None = None, env: dict | None = None,
                 cwd: str | None = None, out=None) -> dict:
    """Run `command` as `processes` local processes of one JAX job and wait for all of them.

    Each process gets its own process group and prefixed output ("[p1] ..."). If one fails, the
    others have `grace_s` to stop on their own (JAX's heartbeat ends them) before they are killed,
    so nothing is left behind. Returns {"returncode", "returncodes", "first_failure", "seconds",
    "exit_seconds": when each process ended on its own (None if killed here), "output": per-process text}.
    """
    if processes < 1:
        raise ValueError(f"processes must be >= 1, got {processes}")
    out = out or sys.stdout
    port = port or free_port()
    procs, threads, outputs = [], [], []
    exited: dict[int, float] = {}  # process -> seconds from start when it ended on its own
    t0 = time.monotonic()
    try:
        for i in range(processes):
            p = subprocess.Popen(list(command), env=local_env(i, processes, port, devices, env), cwd=cwd,
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                 start_new_session=True)
            lines: list = []
            th = threading.Thread(target=_pump, args=(p.stdout, f"[p{i}] ", out, lines), daemon=True)
            th.start()
            procs.append(p), threads.append(th), outputs.append(lines)
        first_failure, deadline = None, None
        while any(p.poll() is None for p in procs):
            now = time.monotonic()
            for i, p in enumerate(procs):
                if p.returncode is not None and i not in exited:
                    exited[i] = round(now - t0, 1)
            failed = [i for i, p in enumerate(procs) if p.returncode not in (None, 0)]
            if first_failure is None and failed:
                first_failure = {"process": failed[0], "returncode": procs[failed[0]].returncode,
                                 "seconds": round(now - t0, 1)}
                deadline = now + grace_s
                out.write(f"[launch] {', '.join(f'process {i} {describe_exit(procs[i].returncode)}' for i in failed)}; "
                          f"the others have {grace_s:.0f}s to stop\n")
            if deadline is not None and now > deadline:
                out.write(f"[launch] killing processes still running {grace_s:.0f}s after process "
                          f"{first_failure['process']} failed\n")
                break
            if timeout_s is not None and now - t0 > timeout_s:
                out.write(f"[launch] timeout after {timeout_s:.0f}s: killing all processes\n")
                break
            time.sleep(0.2)
        for i, p in enumerate(procs):
            if p.poll() is not None and i not in exited:
                exited[i] = round(time.monotonic() - t0, 1)
    finally:
        for p in procs:
            if p.poll() is None:
                _kill_group(p, signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                _kill_group(p, signal.SIGKILL)
                p.wait()
            _kill_group(p, signal.SIGKILL)  # grandchildren left in the group
        for th in threads:
            th.join(timeout=5)
    codes = [p.returncode for p in procs]
    for i in range(len(procs)):
        exited.setdefault(i, None)  # None: it was killed by the launcher (or ended during cleanup)
    if first_failure is None:
        bad = [(i, c) for i, c in enumerate(codes) if c != 0]
        if bad:
            first_failure = {"process": bad[0][0], "returncode": bad[0][1], "seconds": round(time.monotonic() - t0, 1)}
    code = 0 if first_failure is None else first_failure["returncode"]
    return {"returncode": 128 - code if code < 0 else code,
            "returncodes": codes, "first_failure": first_failure, "seconds": round(time.monotonic() - t0, 1),
            "exit_seconds": [exited[i] for i in range(len(procs))],
            "output": ["".join(lines) for lines in outputs]}


# --- generated launch files --------------------------------------------------------------------

def slurm_script(args: Sequence[str], nodes: int, gpus_per_node: int = 8, job_name: str = "jaxllm",
                 time_limit: str = "24:00:00", partition: str | None = None, workdir: str = ".",
                 setup: str = "") -> str:
    """An sbatch script: one task per node, every GPU of the node visible to it; srun starts the
    same worker everywhere, JAX reads the SLURM variables to find the coordinator and its id, and
    --kill-on-bad-exit stops the job when any task dies."""
    lines = ["#!/bin/bash", f"#SBATCH --job-name={job_name}", f"#SBATCH --nodes={nodes}",
             "#SBATCH --ntasks-per-node=1", f"#SBATCH --gpus-per-node={gpus_per_node}",
             f"#SBATCH --time={time_limit}", "#SBATCH --output=%x-%j.out"]
    if partition:
        lines.append(f"#SBATCH --partition={partition}")
    lines += ["set -euo pipefail", f"cd {shlex.quote(workdir)}"]
    if setup:
        lines.append(setup)
    lines += ["export JAXLLM_DISTRIBUTED=auto  # jax.distributed.initialize() reads SLURM_* itself",
              f"srun --kill-on-bad-exit=1 --ntasks={nodes} --ntasks-per-node=1 {shlex.join(worker_command(args))}",
              ""]
    return "\n".join(lines)


def tpu_pod_command(args: Sequence[str], tpu_name: str, zone: str, project: str | None = None,
                    workdir: str = "~/jaxllm") -> list[str]:
    """The gcloud command that starts the same worker on every host of a Cloud TPU pod slice
    (JAX finds the other hosts from the TPU metadata)."""
    inner = f"cd {workdir} && JAXLLM_DISTRIBUTED=auto {shlex.join(worker_command(args, 'python3'))}"
    cmd = ["gcloud", "compute", "tpus", "tpu-vm", "ssh", tpu_name, f"--zone={zone}", "--worker=all",
           f"--command={inner}"]
    if project:
        cmd.insert(6, f"--project={project}")
    return cmd


def kubernetes_manifest(args: Sequence[str], processes: int, image: str, name: str = "jaxllm",
                        gpus_per_process: int = 8, port: int = 12355) -> list[dict]:
    """A headless Service and an indexed Job: pod i gets JOB_COMPLETION_INDEX=i as its process id and
    reaches process 0 at <name>-0.<name>:<port>. backoffLimit 0: one failed pod fails the Job."""
    service = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name},
               "spec": {"clusterIP": "None", "selector": {"job-name": name},
                        "ports": [{"name": "coordinator", "port": port}]}}
    env = [{"name": ENV_COORDINATOR, "value": f"{name}-0.{name}:{port}"},
           {"name": ENV_NUM_PROCESSES, "value": str(processes)},
           {"name": ENV_PROCESS_ID, "valueFrom": {"fieldRef": {
               "fieldPath": "metadata.annotations['batch.kubernetes.io/job-completion-index']"}}}]
    container = {"name": "worker", "image": image, "command": worker_command(args), "env": env,
                 "ports": [{"containerPort": port}],
                 "resources": {"limits": {"nvidia.com/gpu": gpus_per_process}}}
    job = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name},
           "spec": {"completionMode": "Indexed", "completions": processes, "parallelism": processes,
                    "backoffLimit": 0,
                    "template": {"spec": {"subdomain": name, "restartPolicy": "Never",
                                          "containers": [container]}}}}
    return [service, job]


def kubernetes_yaml(docs: list[dict]) -> str:
    import yaml

    return yaml.safe_dump_all(docs, sort_keys=False)


def write_launch_files(args: Sequence[str], out_dir: str | Path, nodes: int, gpus_per_node: int = 8,
                       tpu_name: str = "my-tpu", zone: str = "us-central2-b", image: str = "jaxllm:latest",
                       name: str = "jaxllm") -> dict[str, Path]:
    """Write job.sbatch, tpu_pod.sh and k8s.yaml for `jaxllm ARGS` into `out_dir`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = {"slurm": out / "job.sbatch", "tpu": out / "tpu_pod.sh", "kubernetes": out / "k8s.yaml"}
    files["slurm"].write_text(slurm_script(args, nodes, gpus_per_node, job_name=name))
    files["tpu"].write_text("#!/bin/bash\nset -euo pipefail\n" + shlex.join(tpu_pod_command(args, tpu_name, zone)) + "\n")
    files["kubernetes"].write_text(kubernetes_yaml(kubernetes_manifest(args, nodes, image, name, gpus_per_node)))
    for p in (files["slurm"], files["tpu"]):
        p.chmod(0o755)
    return files
