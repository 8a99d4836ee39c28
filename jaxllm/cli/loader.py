"""`load_model(spec)`: a pretrained name / file / hf:repo, or a jaxllm run directory -> ChatModel.

Lives in the CLI layer because a run directory is read with the recipes (its config, its stages'
checkpoints), which the inference layer may not import.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from jaxllm.infer.engine import ChatModel

# stages whose checkpoints hold a later (better) model than pretraining, newest first
LATER_STAGES = ("rlhf", "rl", "dpo", "sft", "midtrain", "pretrain")


def is_run_dir(path: Path) -> bool:
    """A jaxllm run directory: config.json of an experiment (it names its stages)."""
    try:
        return path.is_dir() and "stages" in json.loads((path / "config.json").read_text())
    except (OSError, ValueError):
        return False


def load_model(spec: str | Path, progress: bool = True) -> ChatModel:
    """A registry name (smollm2-135m-instruct), hf:owner/name, a .gguf file, a HF checkpoint or a run dir."""
    path = Path(spec)
    if is_run_dir(path):
        return load_run(path)
    from jaxllm.model.hub import load_pretrained

    m = load_pretrained(spec, progress=progress)
    specials = m.tokenizer.special_ids
    if str(spec).startswith("smollm2"):
        template = "smollm2"  # ChatML with SmolLM2's default system prompt, as its own template renders
    elif "<|im_start|>" in specials and "<|im_end|>" in specials:
        template = "chatml"
    elif "<|im_sep|>" in specials:
        template = "jaxllm" if "<|bos|>" in specials else "video"
    else:
        template = None  # completions only
    return ChatModel(str(spec) if not path.exists() else path.name, m.cfg, m.params, m.tokenizer, template,
                     m.stop_ids)


def load_run(run_dir: str | Path) -> ChatModel:
    """The newest checkpoint of a run: the latest stage with checkpoints (sft after pretrain, ...)."""
    from jaxllm.data.chat import stop_ids
    from jaxllm.recipes.experiment import open_run, read_stage_results
    from jaxllm.recipes.pretrain import load_params
    from jaxllm.recipes.stages import model_for_tokenizer
    from jaxllm.tokenizer import Tokenizer

    cfg, run_dir = open_run(run_dir)
    results = read_stage_results(run_dir)
    tok_dir = Path(results.get("tokenizer", {}).get("dir", run_dir / "tokenizer"))
    if not tok_dir.exists():
        raise FileNotFoundError(f"{run_dir}: no tokenizer at {tok_dir}; run the tokenizer stage first "
                                f"(`jaxllm run {run_dir}`)")
    tok = Tokenizer.load(tok_dir)
    model_cfg = model_for_tokenizer(cfg.model, tok)
    order = [s for s in LATER_STAGES if s in cfg.stages or (run_dir / s).exists()]
    for stage in order:
        ckpts = run_dir / stage / "checkpoints"
        if ckpts.is_dir() and any(p.name.isdigit() for p in ckpts.iterdir()):
            try:
                params = load_params(run_dir / stage, model_cfg, cfg.optim, cfg.mesh)
                break
            except Exception as e:  # e.g. a stage trained another model (rl.init): fall back to the earlier one
                print(f"[jaxllm] {ckpts}: cannot load it as this run's model ({type(e).__name__}: {str(e)[:200]}); "
                      "trying the previous stage", file=sys.stderr)
    else:
        raise FileNotFoundError(f"{run_dir}: no checkpoint under any of {', '.join(order) or 'pretrain'}/checkpoints;"
                                f" train first (`jaxllm run {run_dir}`)")
    ends = stop_ids(tok, "jaxllm")["end"]
    return ChatModel(f"{run_dir.name}/{stage}", model_cfg, params, tok, "jaxllm", tuple(ends) + (tok.bos_id,),
                     bos_prefix=(tok.bos_id,))
