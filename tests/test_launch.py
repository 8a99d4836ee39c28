"""Launchers: the local launcher runs a real 2-process JAX job; the generated SLURM script runs under a
stand-in `srun` (JAX's own SLURM detection then wires the processes); the Kubernetes manifest and the
TPU pod command are well-formed and give every worker the same coordinator and a distinct id."""
import os
import shlex
import socket
import subprocess
import sys
import textwrap

import pytest
import yaml

from jaxllm.parallel.distributed import DistributedError, cluster_from_env
from jaxllm.recipes.launch import (kubernetes_manifest, kubernetes_yaml, launch_local, slurm_script,
                                   tpu_pod_command, worker_command)

CHECK = ["launch", "check"]  # each process adds (id + 1) per local device: 2 procs x 2 devices -> 6


def check_totals(text: str) -> list[str]:
    return sorted(line.split("[check] ", 1)[1] for line in text.splitlines() if "[check] " in line)


def test_local_launcher_runs_a_two_process_job():
    r = launch_local(worker_command(CHECK, sys.executable), processes=2, devices=2, timeout_s=120)
    assert r["returncode"] == 0, "\n".join(r["output"])[-3000:]
    assert check_totals("\n".join(r["output"])) == ["process 0/2, 2 local of 4 devices (cpu): total 6",
                                                    "process 1/2, 2 local of 4 devices (cpu): total 6"]


FAKE_SRUN = textwrap.dedent("""\
    #!/usr/bin/env python3
    # stand-in for srun on one machine: start --ntasks copies with the SLURM variables a real srun sets
    import os, subprocess, sys
    args = sys.argv[1:]
    n, cmd, kill = 1, [], False
    while args:
        a = args.pop(0)
        if a.startswith("--ntasks="): n = int(a.split("=")[1])
        elif a == "--kill-on-bad-exit=1": kill = True
        elif a.startswith("--"): pass
        else: cmd = [a] + args; break
    procs = []
    for i in range(n):
        env = dict(os.environ, SLURM_PROCID=str(i), SLURM_LOCALID="0", SLURM_NTASKS=str(n),
                   SLURM_STEP_NODELIST="localhost", SLURM_STEP_NUM_NODES=str(n))
        procs.append(subprocess.Popen(cmd, env=env))
    codes = [p.wait(timeout=120) for p in procs]
    print("srun: kill-on-bad-exit" if kill else "srun: no kill-on-bad-exit", flush=True)
    sys.exit(max(abs(c) for c in codes))
""")


def slurm_port() -> int:
    """A free port in the range JAX derives from SLURM_JOB_ID (61440 + id % 4096)."""
    for port in range(61440 + os.getpid() % 3000, 65535):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
                return port
            except OSError:
                continue
    pytest.skip("no free port in JAX's SLURM range")


def test_slurm_script_is_wired_by_jax_slurm_detection(tmp_path):
    script = slurm_script(CHECK, nodes=2, gpus_per_node=8, job_name="t", partition="gpu", workdir=str(tmp_path))
    assert "#SBATCH --nodes=2" in script and "#SBATCH --ntasks-per-node=1" in script
    assert "#SBATCH --gpus-per-node=8" in script and "#SBATCH --partition=gpu" in script
    srun = next(line for line in script.splitlines() if line.startswith("srun "))
    assert shlex.split(srun)[-len(worker_command(CHECK)):] == worker_command(CHECK)
    (tmp_path / "job.sbatch").write_text(script)
    assert subprocess.run(["bash", "-n", str(tmp_path / "job.sbatch")]).returncode == 0
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    # this interpreter, not `env python3`: a pyenv shim would put its own python first on the tasks' PATH
    (bin_dir / "srun").write_text(FAKE_SRUN.replace("#!/usr/bin/env python3", f"#!{sys.executable}", 1))
    (bin_dir / "srun").chmod(0o755)
    # a wrapper, not a symlink: a symlinked venv python finds no pyvenv.cfg beside it and loses the venv
    (bin_dir / "python").write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} "$@"\n')
    (bin_dir / "python").chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JAXLLM_", "SLURM_"))}
    env.update(PATH=f"{bin_dir}:{env['PATH']}", SLURM_JOB_ID=str(slurm_port() - 61440), JAX_PLATFORMS="cpu",
               XLA_FLAGS="--xla_force_host_platform_device_count=2")
    r = subprocess.run(["bash", str(tmp_path / "job.sbatch")], env=env, capture_output=True, text=True, timeout=180,
                       start_new_session=True)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert check_totals(r.stdout) == ["process 0/2, 2 local of 4 devices (cpu): total 6",
                                      "process 1/2, 2 local of 4 devices (cpu): total 6"]
    assert "srun: kill-on-bad-exit" in r.stdout


def test_kubernetes_manifest_gives_consistent_ids():
    docs = list(yaml.safe_load_all(kubernetes_yaml(kubernetes_manifest(["run", "gpt2_1p5b"], 4, "img:1", "gpt2",
                                                                         gpus_per_process=8, port=2222))))
    service, job = docs
    assert service["kind"] == "Service" and service["spec"]["clusterIP"] == "None"
    assert service["spec"]["selector"] == {"job-name": "gpt2"}  # the label Kubernetes puts on a Job's pods
    spec = job["spec"]
    assert (spec["completionMode"], spec["completions"], spec["parallelism"], spec["backoffLimit"]) == ("Indexed", 4, 4, 0)
    pod = spec["template"]["spec"]
    assert pod["subdomain"] == service["metadata"]["name"] and pod["restartPolicy"] == "Never"
    (container,) = pod["containers"]
    assert container["command"] == worker_command(["run", "gpt2_1p5b"])
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 8
    seen = []
    for index in range(4):  # what each pod sees: the downward API resolves the completion index
        env = {}
        for e in container["env"]:
            if "value" in e:
                env[e["name"]] = e["value"]
            else:
                assert e["valueFrom"]["fieldRef"]["fieldPath"].endswith("['batch.kubernetes.io/job-completion-index']")
                env[e["name"]] = str(index)
        seen.append(cluster_from_env(env))
    assert {s["coordinator_address"] for s in seen} == {"gpt2-0.gpt2:2222"}  # pod 0 via the headless service
    assert [s["process_id"] for s in seen] == [0, 1, 2, 3] and {s["num_processes"] for s in seen} == {4}


def test_tpu_pod_command_runs_the_same_worker_everywhere():
    cmd = tpu_pod_command(["run", "llama_1b", "--run-dir", "gs://b/runs/l"], "pod-v5p", "us-east5-a", project="p")
    assert cmd[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "pod-v5p"]
    assert "--worker=all" in cmd and "--zone=us-east5-a" in cmd and "--project=p" in cmd
    inner = shlex.split(next(c for c in cmd if c.startswith("--command=")).split("=", 1)[1])
    assert "JAXLLM_DISTRIBUTED=auto" in inner  # jax.distributed.initialize() reads the TPU metadata
    assert inner[-len(worker_command([])) - 4:] == worker_command(["run", "llama_1b", "--run-dir", "gs://b/runs/l"], "python3")


def test_cluster_env_errors():
    assert cluster_from_env({}) is None
    with pytest.raises(DistributedError, match="JAXLLM_NUM_PROCESSES"):
        cluster_from_env({"JAXLLM_COORDINATOR": "h:1", "JAXLLM_PROCESS_ID": "0"})
    with pytest.raises(DistributedError, match="must be in"):
        cluster_from_env({"JAXLLM_COORDINATOR": "h:1", "JAXLLM_NUM_PROCESSES": "2", "JAXLLM_PROCESS_ID": "2"})


def test_cli_prints_the_generated_files(capsys):
    from jaxllm.cli.launch import main

    assert main(["slurm", "--nodes", "3", "--", "run", "gpt2_1p5b"]) == 0
    assert capsys.readouterr().out == slurm_script(["run", "gpt2_1p5b"], 3)
    assert main(["k8s", "--nodes", "2", "--image", "i:1", "--", "run", "x"]) == 0
    assert list(yaml.safe_load_all(capsys.readouterr().out)) == kubernetes_manifest(["run", "x"], 2, "i:1")
    assert main(["tpu", "--tpu-name", "t", "--zone", "z", "--", "run", "x"]) == 0
    assert shlex.split(capsys.readouterr().out) == tpu_pod_command(["run", "x"], "t", "z")


DIE = textwrap.dedent("""
    import os, signal, sys, time
    from jaxllm.parallel.distributed import initialize, sync
    initialize()
    import jax
    sync("started")
    if jax.process_index() == int(sys.argv[1]):
        os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(300)  # the survivor idles: only JAX's coordination service can stop it
""")


@pytest.mark.parametrize("dies", [0, 1])
def test_a_dead_process_stops_the_others_with_a_clear_error(dies):
    r = launch_local([sys.executable, "-c", DIE, str(dies)], processes=2, devices=1, grace_s=60, timeout_s=150)
    other = 1 - dies
    assert r["returncodes"][dies] == -9
    assert r["returncodes"][other] != 0 and r["exit_seconds"][other] is not None  # it stopped by itself
    assert r["exit_seconds"][other] - r["exit_seconds"][dies] < 60
    assert "another task died" in r["output"][other]
