"""`jaxllm launch local|worker|slurm|tpu|k8s`: run one jaxllm command as a multi-process JAX job.

    jaxllm launch local --processes 2 --devices 4 -- run speedrun_smoke --run-dir runs/smoke2x4
    jaxllm launch slurm --nodes 4 -- run gpt2_1p5b --run-dir runs/gpt2 > job.sbatch && sbatch job.sbatch
    jaxllm launch tpu --tpu-name my-v5p-64 --zone us-east5-a -- run llama_1b --run-dir runs/llama
    jaxllm launch k8s --nodes 2 --image REGISTRY/jaxllm:TAG -- run gpt2_1p5b --run-dir /data/runs/gpt2 | kubectl apply -f -

`python -m jaxllm.cli.launch ...` works the same (the generated files use it for the workers).
"""
from __future__ import annotations

import argparse
import shlex
import sys


def _command_args(p) -> None:
    p.add_argument("args", nargs=argparse.REMAINDER,
                   help="the jaxllm command each process runs, after `--` (e.g. -- run speedrun)")


def _strip(args: list[str]) -> list[str]:
    args = list(args)
    if args and args[0] == "--":
        args = args[1:]
    if not args:
        raise SystemExit("jaxllm launch: give the command to run after `--`, e.g. `-- run speedrun_smoke`")
    return args


def add_parser(sub) -> None:
    p = sub.add_parser("launch", help="run a jaxllm command on many processes (local, SLURM, TPU pod, Kubernetes)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    kinds = p.add_subparsers(dest="launcher", metavar="LAUNCHER")

    local = kinds.add_parser("local", help="N processes x M CPU devices on 127.0.0.1 (how multi-host is tested)")
    local.add_argument("--processes", "-n", type=int, default=2)
    local.add_argument("--devices", "-d", type=int, default=None,
                       help="fake CPU devices per process (sets XLA_FLAGS and JAX_PLATFORMS=cpu)")
    local.add_argument("--port", type=int, default=None, help="coordinator port (default: a free one)")
    local.add_argument("--grace", type=float, default=60.0,
                       help="seconds the others get to stop after one process fails, before being killed")
    local.add_argument("--exec", action="store_true",
                       help="the arguments are a whole program (e.g. -- python train.py), not a jaxllm command")
    _command_args(local)
    local.set_defaults(func=local_command)

    worker = kinds.add_parser("worker", help="join the distributed runtime (from the environment) and run the command")
    _command_args(worker)
    worker.set_defaults(func=worker_command)

    check = kinds.add_parser("check", help="print this process's place in the job and sum a number over all devices "
                                           "(run it under a launcher to test the wiring)")
    check.set_defaults(func=check_command)

    slurm = kinds.add_parser("slurm", help="print an sbatch script")
    slurm.add_argument("--nodes", type=int, required=True)
    slurm.add_argument("--gpus-per-node", type=int, default=8)
    slurm.add_argument("--job-name", default="jaxllm")
    slurm.add_argument("--time", default="24:00:00")
    slurm.add_argument("--partition", default=None)
    slurm.add_argument("--workdir", default=".")
    _command_args(slurm)
    slurm.set_defaults(func=slurm_command)

    tpu = kinds.add_parser("tpu", help="print the gcloud command that starts the job on every TPU pod worker")
    tpu.add_argument("--tpu-name", required=True)
    tpu.add_argument("--zone", required=True)
    tpu.add_argument("--project", default=None)
    tpu.add_argument("--workdir", default="~/jaxllm", help="checkout of the project on the TPU VMs")
    _command_args(tpu)
    tpu.set_defaults(func=tpu_command)

    k8s = kinds.add_parser("k8s", help="print a Kubernetes Service + indexed Job manifest (GPU nodes)")
    k8s.add_argument("--nodes", type=int, required=True, help="pods (one process each)")
    k8s.add_argument("--image", required=True)
    k8s.add_argument("--name", default="jaxllm")
    k8s.add_argument("--gpus-per-node", type=int, default=8)
    k8s.add_argument("--port", type=int, default=12355)
    _command_args(k8s)
    k8s.set_defaults(func=k8s_command)
    p.set_defaults(func=lambda a: (p.print_help(), 2)[1])


def local_command(a) -> int:
    from jaxllm.recipes.launch import launch_local, worker_command as wc

    args = _strip(a.args)
    command = args if a.exec else wc(args, sys.executable)
    r = launch_local(command, a.processes, a.devices, a.port, grace_s=a.grace)
    if r["first_failure"]:
        from jaxllm.recipes.launch import describe_exit

        codes = ", ".join(f"process {i} {describe_exit(c)}" + ("" if r["exit_seconds"][i] is not None else " (stopped here)")
                          for i, c in enumerate(r["returncodes"]) if c)
        print(f"[launch] FAILED after {r['seconds']}s: {codes}. Run the same command again to resume from the "
              "last complete checkpoint.", file=sys.stderr)
    else:
        print(f"[launch] {a.processes} processes finished in {r['seconds']}s")
    return r["returncode"]


def worker_command(a) -> int:
    from jaxllm.parallel.distributed import initialize

    args = _strip(a.args)
    initialize()
    if args[0] == "launch":  # e.g. `-- launch check`, also before `launch` is a registered command
        return main(args[1:])
    from jaxllm.cli import main as jaxllm_main

    return jaxllm_main(args)


def check_command(a) -> int:
    """Each process contributes (process id + 1) per local device; all must print the same total."""
    from jaxllm.parallel.distributed import initialize

    initialize()  # no-op when `worker` already did it
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.sharding import NamedSharding, PartitionSpec as P

    from jaxllm.parallel import MeshConfig, make_mesh
    from jaxllm.parallel.distributed import describe

    mesh = make_mesh(MeshConfig())
    local = np.full((jax.local_device_count(),), jax.process_index() + 1, np.float32)
    x = jax.make_array_from_process_local_data(NamedSharding(mesh, P("data")), local)
    total = jax.jit(jnp.sum, out_shardings=NamedSharding(mesh, P()))(x)
    # one write with its newline: processes share the pipe, and unbuffered print writes the newline separately
    sys.stdout.write(f"[check] {describe()}: total {float(total):g}\n")
    sys.stdout.flush()
    return 0


def slurm_command(a) -> int:
    from jaxllm.recipes.launch import slurm_script

    print(slurm_script(_strip(a.args), a.nodes, a.gpus_per_node, a.job_name, a.time, a.partition, a.workdir), end="")
    return 0


def tpu_command(a) -> int:
    from jaxllm.recipes.launch import tpu_pod_command

    print(shlex.join(tpu_pod_command(_strip(a.args), a.tpu_name, a.zone, a.project, a.workdir)))
    return 0


def k8s_command(a) -> int:
    from jaxllm.recipes.launch import kubernetes_manifest, kubernetes_yaml

    print(kubernetes_yaml(kubernetes_manifest(_strip(a.args), a.nodes, a.image, a.name, a.gpus_per_node, a.port)), end="")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jaxllm.cli.launch")
    add_parser(parser.add_subparsers(dest="command"))
    a = parser.parse_args(["launch", *(sys.argv[1:] if argv is None else argv)])
    return int(a.func(a) or 0)


if __name__ == "__main__":
    sys.exit(main())
