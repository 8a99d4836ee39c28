"""Experiments: one composed config, a run directory, and a sequence of resumable stages.

`start_run(cfg)` makes `runs/<name>-<timestamp>/` with the resolved `config.json`; `run_stages`
runs each stage in order and records finished ones in `stages.json`, so running the same directory
again skips what is done and resumes the stage that was interrupted (stages resume from their own
checkpoints). A stage is a function `stage(ctx: RunContext) -> dict` named in `Config.stages`
either by a registered name or as `module:function`.
"""
from __future__ import annotations

import dataclasses
import datetime
import json
import os
import time
from pathlib import Path
from typing import Callable

import jax

from jaxllm.config import ConfigError, load_json, load_python_file, override, resolve_function, to_json
from jaxllm.data.pipeline import PipelineConfig
from jaxllm.data.sources import DataConfig
from jaxllm.data.web import RecipeConfig, WebConfig
from jaxllm.model import ModelConfig
from jaxllm.parallel import MeshConfig
from jaxllm.parallel.distributed import sync
from jaxllm.recipes.demos import DemosConfig
from jaxllm.recipes.rlhf import RLHFConfig
from jaxllm.rl.config import RLConfig
from jaxllm.recipes.sft import SFTConfig
from jaxllm.tokenizer import TokenizerConfig
from jaxllm.train.optim import OptimConfig
from jaxllm.train.step import TrainConfig


@dataclasses.dataclass(frozen=True)
class SampleConfig:
    """What the training loop and the evaluate stage print as samples."""
    prompts: tuple[str, ...] = ("The capital of France is", "Once upon a time", "In 1905, Albert Einstein")
    max_new_tokens: int = 40
    temperature: float = 0.8
    top_k: int = 50
    top_p: float = 1.0
    seed: int = 0


@dataclasses.dataclass(frozen=True)
class Config:
    name: str = "experiment"
    runs_dir: str = "runs"
    seed: int = 0
    stages: tuple[str, ...] = ("data", "tokenizer", "shards", "pretrain", "evaluate", "report")
    data: DataConfig = DataConfig()
    tokenizer: TokenizerConfig = TokenizerConfig()
    pipeline: PipelineConfig = PipelineConfig()
    model: ModelConfig = ModelConfig()
    mesh: MeshConfig = MeshConfig()
    optim: OptimConfig = OptimConfig()
    train: TrainConfig = TrainConfig()
    sample: SampleConfig = SampleConfig()
    web: WebConfig = WebConfig()
    web_recipe: RecipeConfig = RecipeConfig(pages_per_source=100)
    sft: SFTConfig = SFTConfig()
    rl: RLConfig = RLConfig()
    rlhf: RLHFConfig = RLHFConfig()
    demos: DemosConfig = DemosConfig()
    notes: str = ""


# Stages that prepare files on one machine: in a multi-process run only process 0 runs them.
HOST_STAGES = ("web", "data", "tokenizer", "shards", "report")

STAGES: dict[str, str] = {
    "web": "jaxllm.recipes.stages:web_stage",
    "data": "jaxllm.recipes.stages:data_stage",
    "tokenizer": "jaxllm.recipes.stages:tokenizer_stage",
    "shards": "jaxllm.recipes.stages:shards_stage",
    "pretrain": "jaxllm.recipes.stages:pretrain_stage",
    "evaluate": "jaxllm.recipes.stages:evaluate_stage",
    "sft": "jaxllm.recipes.sft:sft_stage",
    "rl": "jaxllm.recipes.rl:rl_stage",
    "rlhf": "jaxllm.recipes.rlhf:rlhf_stage",
    "demos": "jaxllm.recipes.demos:demos_stage",
    "report": "jaxllm.recipes.report:report_stage",
}


@dataclasses.dataclass
class RunContext:
    cfg: Config
    run_dir: Path
    results: dict  # stage name -> the dict it returned (JSON), from stages.json

    def stage_dir(self, name: str) -> Path:
        path = self.run_dir / name
        path.mkdir(parents=True, exist_ok=True)
        return path


def experiments_dirs() -> list[Path]:
    repo = Path(__file__).resolve().parents[2] / "experiments"
    return [Path.cwd() / "experiments", repo]


def load_experiment(spec: str, overrides: tuple[str, ...] = (), **kwargs) -> Config:
    """An experiment file path, an experiment name in experiments/, or a saved config.json."""
    path = Path(spec)
    if path.suffix == ".json":
        cfg = load_json(Config, path)
    else:
        if path.suffix != ".py":
            candidates = [d / f"{spec}.py" for d in experiments_dirs()]
            found = next((c for c in candidates if c.exists()), None)
            if found is None:
                names = sorted({p.stem for d in experiments_dirs() if d.exists() for p in d.glob("*.py")})
                raise ConfigError(f"no experiment named {spec!r}; known: {', '.join(names) or 'none'} "
                                  "(or pass a path to an experiment .py file, a run directory or a config.json)")
            path = found
        cfg = load_python_file(path, "config", **kwargs)
        if not isinstance(cfg, Config):
            raise ConfigError(f"{path}: config() must return jaxllm.recipes.experiment.Config, got {type(cfg).__name__}")
    return override(cfg, list(overrides))


def start_run(cfg: Config, run_dir: str | Path | None = None) -> Path:
    """Create a fresh run directory and write the resolved config into it (process 0 decides and writes)."""
    if run_dir is None and jax.process_count() > 1:
        raise ConfigError("with several processes pass --run-dir (every process must name the same directory)")
    if run_dir is None:
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        run_dir = Path(cfg.runs_dir) / f"{cfg.name}-{stamp}"
        n = 1
        while Path(run_dir).exists():
            n += 1
            run_dir = Path(cfg.runs_dir) / f"{cfg.name}-{stamp}-{n}"
    run_dir = Path(run_dir)
    sync("start_run:check")
    exists = (run_dir / "config.json").exists()
    sync("start_run:checked")  # nobody writes before everybody has looked
    if exists:
        raise ConfigError(f"{run_dir} already holds a run; run `jaxllm run {run_dir}` to resume it")
    if jax.process_index() == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        _atomic_write(run_dir / "config.json", to_json(cfg))
    sync("start_run:written")
    return run_dir


def open_run(run_dir: str | Path) -> tuple[Config, Path]:
    run_dir = Path(run_dir)
    if not (run_dir / "config.json").exists():
        raise ConfigError(f"{run_dir} is not a run directory (no config.json); "
                          "pass an experiment name or file to start a new run")
    return load_json(Config, run_dir / "config.json"), run_dir


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def read_stage_results(run_dir: Path) -> dict:
    path = run_dir / "stages.json"
    return json.loads(path.read_text()) if path.exists() else {}


def resolve_stage(name: str) -> Callable:
    ref = STAGES.get(name, name)
    if ":" not in ref:
        raise ConfigError(f"unknown stage {name!r}; known stages: {', '.join(STAGES)} (or give module:function)")
    return resolve_function(ref)


def run_stages(cfg: Config, run_dir: Path, only: tuple[str, ...] = ()) -> dict:
    """Run the config's stages in order, skipping finished ones; returns all stage results."""
    for name in cfg.stages:
        resolve_stage(name)  # fail fast on a typo before hours of work
    only = tuple(n.strip() for item in only for n in item.split(",") if n.strip())  # "--stage a,b" too
    missing = [n for n in only if n not in cfg.stages]
    if missing:
        raise ValueError(f"stage(s) {', '.join(missing)} not in this run's stages ({', '.join(cfg.stages)}); "
                         f"add them to 'stages' in {run_dir}/config.json (in pipeline order) to run them here")
    results = read_stage_results(run_dir)
    for name in cfg.stages:
        if only and name not in only:
            continue
        if name in results and not only:
            print(f"[jaxllm] stage {name}: done earlier, skipping")
            continue
        print(f"[jaxllm] stage {name}: starting")
        t0 = time.time()
        if jax.process_index() == 0 or name not in HOST_STAGES:
            ctx = RunContext(cfg=cfg, run_dir=run_dir, results=results)
            out = resolve_stage(name)(ctx) or {}
            out = {**out, "seconds": round(time.time() - t0, 2)}
            results[name] = out
            if jax.process_index() == 0:
                _atomic_write(run_dir / "stages.json", json.dumps(results, indent=2, default=str))
        sync(f"stage:{name}")
        if jax.process_index() != 0 and name in HOST_STAGES:
            results = read_stage_results(run_dir)  # process 0's results
        print(f"[jaxllm] stage {name}: done in {time.time() - t0:.1f}s")
    return results
