"""`report.md` for a run: config, data and tokenizer stats, curves, evaluations and samples."""
from __future__ import annotations

import os
from pathlib import Path

import jax

from jaxllm.config import to_json
from jaxllm.recipes.demos import EVAL_ROWS, reused_evals, stages_that_ran
from jaxllm.recipes.experiment import RunContext

NOT_RUN = "not run"


def _rel(path: Path, base: Path) -> str:
    return os.path.relpath(path, base)


def _fmt(x, digits=4):
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    if isinstance(x, int):
        return f"{x:,}"
    return str(x)


def _rate(c: dict | None, digits: int = 0) -> str:
    """'43% (13/30; 95% CI 26-61%)' from a rate cell; 'not run' without one."""
    if not c:
        return NOT_RUN
    if "error" in c:
        return f"{NOT_RUN} ({c['error'][:90]})"
    ci = f"; 95% CI {c['ci95'][0]:.{digits}%}-{c['ci95'][1]:.{digits}%}" if c.get("ci95") else ""
    k = f"{c['k']}/{c['n']}" if "k" in c else f"n={c['n']}"
    return f"{c['value']:.{digits}%} ({k}{ci})"


def _eval_cell(key: str, c: dict | None) -> str:
    if not c or "error" in c:
        return _rate(c)
    if key == "bpb":
        n = f" ({c['n']:,} tokens)" if c.get("n") else ""
        return f"{c['value']:.4f}{n}"
    text = _rate(c)
    if key == "mc":
        text += f", chance {c['chance']:.0%}, {c.get('prompt', '')}"
    return text + (" ‡" if c.get("from", "demos") != "demos" else "")


def eval_table_md(r: dict) -> str:
    """The table of one evaluation suite across the stages that ran (base → SFT → RL → RLHF)."""
    cols = stages_that_ran(r)
    if not cols:
        return ""
    evals = (r.get("demos") or {}).get("stage_evals") or reused_evals(r)
    names = {"base": "base (pretrained)", "sft": "SFT", "rl": "RL", "rlhf": "RLHF"}
    lines = ["## Evaluations across stages", "",
             "| evaluation | better | " + " | ".join(names[c] for c in cols) + " |", "|---|---|" + "---|" * len(cols)]
    for key, label, better in EVAL_ROWS:
        if key == "mc":
            task = next((e["mc"].get("task") for e in evals.values() if isinstance(e.get("mc"), dict)
                         and e["mc"].get("task")), None)
            label = f"multiple choice ({task}), accuracy" if task else label
        cells = ["n/a (toy policy) ¹" if c == "rlhf" else _eval_cell(key, evals.get(c, {}).get(key)) for c in cols]
        lines.append(f"| {label} | {better} | " + " | ".join(cells) + " |")
    trials = (r.get("demos") or {}).get("trials")
    lines += ["", "Each cell: the rate, (successes/trials; 95% Wilson interval). Every stage is asked the same "
              "held-out questions in the chat template, the base model too (it has never seen the template), "
              "except multiple choice, where the base model reads 5-shot text."
              + (f" Behaviour checks use {trials} questions per stage." if trials else ""),
              "‡ measured by the stage itself (pretrain: validation bpb; sft: identity and tool use before/after; "
              "rl: held-out arithmetic before/after on its chosen difficulty) and reused here. "
              f"'{NOT_RUN}': nothing measured it in this run (the demos stage did not run, or the reason is given)."]
    if "rlhf" in cols:
        lines.append("¹ The RLHF stage trains its own toy-language policy (see its section), not this run's model.")
    return "\n".join(lines)


def _esc(text: str, width: int = 160) -> str:
    """Model text made safe for one markdown table cell."""
    text = str(text)[:width].replace("\n", "⏎").replace("|", "\\|")
    return f"`{text}`" if "`" not in text else text


def _num(x, digits: int = 3) -> str:
    return "" if x is None else f"{x:.{digits}f}"


def _img(path: str, alt: str) -> str:
    return f"![{alt}]({path})"


def _numbers(x, depth: int = 0) -> str:
    """A compact 'key: value' rendering of the numbers in another stage's result dict (schema not fixed)."""
    if isinstance(x, dict):
        parts = []
        for k, v in x.items():
            if k in ("report_md", "samples") or k.endswith("_samples"):
                continue
            inner = _numbers(v, depth + 1) if depth < 2 else ""
            if inner:
                parts.append(f"{k}: {inner}")
        return ("{" + ", ".join(parts) + "}") if depth else ", ".join(parts)
    if isinstance(x, bool):
        return str(x)
    if isinstance(x, float):
        return f"{x:.3f}"
    if isinstance(x, int):
        return str(x)
    return ""


def _prop(p) -> str:
    """A proportion of the sft stage ({"rate", "k", "n", "ci95"}, docs/sft.md) like a rate cell."""
    if not isinstance(p, dict) or "n" not in p:
        return NOT_RUN
    if not p["n"] or p.get("rate") is None:
        return "n=0"
    return _rate({"value": p["rate"], "k": p["k"], "n": p["n"], "ci95": p.get("ci95")})


def _idk(x: dict) -> str:
    """results["sft"]["idk"] (the sft stage's knowledge probing → "I don't know" SFT, docs/sft.md)."""
    try:
        b, a = x["before"], x["after"]
        return (f"hallucination on invented people {_prop(b['hallucination'])} → **{_prop(a['hallucination'])}**; "
                f"held-out QA accuracy {_prop(b['qa_accuracy'])} → {_prop(a['qa_accuracy'])} (sft stage)")
    except (KeyError, TypeError):
        return _numbers(x) or NOT_RUN


def _think(x: dict) -> str:
    """results["sft"]["think"] (two SFT runs: step by step vs answer first, docs/sft.md)."""
    try:
        v, t = x["variants"], x["test"]
        return (f"held-out {t['bigger_digits']}-digit problems (bigger than trained): step by step "
                f"**{_prop(v['steps']['bigger'])}** vs answer first **{_prop(v['answer_first']['bigger'])}**; "
                f"trained size ({t['same_digits']}-digit): {_prop(v['steps']['same'])} vs {_prop(v['answer_first']['same'])} "
                "(sft stage)")
    except (KeyError, TypeError):
        return _numbers(x) or NOT_RUN


def demos_md(r: dict, run_dir: Path) -> str:
    """The Demonstrations section: one row per demonstration from the video, with its number or plot."""
    d = r.get("demos") or {}
    rows: list[tuple[str, str]] = []
    details: list[str] = []
    bpe = d.get("bpe")
    if bpe:
        w = bpe["walk"]
        text, ours, cl = bpe["text"]["text"], bpe["text"]["ours"], bpe["text"]["cl100k_base"]
        rows.append(("BPE merge walk-through", f"{w['word']!r}: {w['bytes']} bytes → {len(w['ids'])} tokens in "
                     f"{len(w['steps'])} merges (steps below); {text!r} is {len(ours['ids'])} tokens here"))
        rows.append(("the same text in cl100k_base (tiktoken)", f"{len(cl['ids'])} tokens: ids {cl['ids']}" if "ids" in cl
                     else f"{NOT_RUN} ({cl.get('error')})"))
        sp = lambda x: _esc(x.replace(" ", "␣"))  # noqa: E731  (a visible space)
        details += ["### BPE merge walk-through", "", f"Merges applied to {w['word']!r} lowest rank first, as tiktoken "
                    "does (␣ is a space):", "", "| step | merge (rank) | pieces |", "|---|---|---|"]
        details += [f"| {i + 1} | {sp(s['merge'][0] + '+' + s['merge'][1])} ({s['rank']}) | "
                    f"{' · '.join(sp(x) for x in s['pieces'])} |" for i, s in enumerate(w["steps"])]
        details += ["", f"{text!r} in this run's tokenizer: {ours['ids']} = " + " · ".join(sp(x) for x in ours["pieces"]), ""]
        if "ids" in cl:
            details += [f"and in cl100k_base: {cl['ids']} = " + " · ".join(sp(x) for x in cl["pieces"]), ""]
    else:
        rows += [("BPE merge walk-through", NOT_RUN), ("the same text in cl100k_base (tiktoken)", NOT_RUN)]
    u = d.get("one_update")
    if u:
        sweep = ", ".join(f"{x['p_after']:.4f} (lr {x['lr']:g})" for x in u.get("sweep", []))
        rows.append(("one update raises p(correct next token)",
                     f"p({u['target']!r}) {u['p_before']:.4f} → **{u['p_after']:.4f}** after one SGD step on its loss "
                     f"with lr {u['lr']:g} (gradient norm {u['grad_norm']:.2f}; base model, {u['context_tokens']} tokens "
                     f"of a held-out document)" + (f"; after one step at each lr: {sweep}" if sweep else "")))
    else:
        rows.append(("one update raises p(correct next token)", NOT_RUN))
    if u:
        details += ["### One update", "", f"Context: …{_esc(u['context'], 200)} → target {_esc(u['target'])}", "",
                    "| | top next tokens (p) |", "|---|---|",
                    "| before | " + ", ".join(f"{_esc(t['token'])} {t['p']:.3f}" for t in u["top_before"]) + " |",
                    "| after | " + ", ".join(f"{_esc(t['token'])} {t['p']:.3f}" for t in u["top_after"]) + " |", ""]
    samples = d.get("pretrain_samples")
    steps = [s["step"] for s in samples or []]
    rows.append(("samples every N steps during pretraining",
                 f"{len(steps)} samples, steps {steps[0]}…{steps[-1]} (below)" if steps else NOT_RUN))
    if steps:
        details += ["### Pretraining samples", "", "| step | val bpb | sample (first prompt) |", "|---|---|---|"]
        details += [f"| {s['step']} | {_num(s['val_bpb'])} | {_esc(s['sample'])} |" for s in samples]
        details.append("")
    res = (r.get("evaluate") or {}).get("resamples")
    rows.append(("resampling the same prefix", (f"{len(res)} samples, {len(set(res))} different: "
                 + " / ".join(_esc(x, 90) for x in res[:2]) + " … (all in Evaluation)") if res else NOT_RUN))
    g = d.get("regurgitation")
    if g:
        def mem(m):
            return (f"{m['loss']:.2f} nats/token, {m['verbatim_tokens']}/{m['compared']} tokens verbatim "
                    f"({m['token_match']:.0%} match)")
        rows.append(("regurgitation: document seen ~10x vs once", f"repeated {g['repeats']}x: **{mem(g['repeated'])}**; "
                     f"seen once: {mem(g['once'])}; never seen: {mem(g['never'])} "
                     + (_img(g["png"], "regurgitation") if g.get("png") else "")))
        details += ["### Regurgitation", "", f"Greedy continuation of each document's first {g['repeated']['prefix_tokens']} "
                    "tokens by the base model, against the document:", "",
                    "| document | loss | continuation | document says |", "|---|---|---|---|"]
        details += [f"| {name} | {g[k]['loss']:.2f} | {_esc(g[k]['continuation'], 120)} | {_esc(g[k]['truth'], 120)} |"
                    for k, name in (("repeated", f"in training {g['repeats']}x"), ("once", "in training once"),
                                    ("never", "held out"))]
        details.append("")
    else:
        rows.append(("regurgitation: document seen ~10x vs once",
                     f"{NOT_RUN}: no document was planted in this run's training data (demos.plant_repeats, data stage)"))
    f = d.get("fewshot")
    rows.append(("few-shot prompting (base model, capital cities)", f"{f['shots']}-shot: {_rate(f['few_shot'])}; "
                 f"zero-shot 'The capital of X is': {_rate(f['zero_shot'])}" if f else NOT_RUN))
    fc = d.get("fake_conversation")
    rows.append(("fake-conversation prompt (base model)", " / ".join(f"{_esc(x['question'], 40)} → {_esc(x['reply'], 80)}"
                                                                    for x in fc[:2]) if fc else NOT_RUN))
    sft = r.get("sft") or {}
    ev = d.get("stage_evals") or reused_evals(r)
    ident = [f"{name}: {_rate(ev.get(c, {}).get('identity'))}" for c, name in (("base", "before SFT"), ("sft", "after SFT"),
                                                                              ("rl", "after RL")) if ev.get(c, {}).get("identity")]
    rows.append(("identity before/after SFT", "; ".join(ident) if ident else NOT_RUN))
    for key, label, fmt in (("idk", "hallucination before/after the \"I don't know\" data", _idk),
                            ("think", "answer-first vs step-by-step, tested on bigger numbers", _think)):
        got = sft.get(key)
        rows.append((label, fmt(got) if isinstance(got, dict) else NOT_RUN))
    le = d.get("letters")
    rows.append(("character-level questions with and without the python tool",
                 f"{le['model']} model, letter counting: with the tool {_rate(le['with_tool'])}; "
                 f"without an interpreter (the code it writes is never executed) {_rate(le['without_tool'])}; "
                 "right = the first number after the last tool output is the count" if le else NOT_RUN))
    nine = d.get("nine")
    rows.append(("\"9.11 vs 9.9\" asked many times", f"{nine['model']} model says 9.9: {_rate(nine)}; counts "
                 f"{nine['counts']} {_img(nine['png'], '9.11 vs 9.9')}" if nine else NOT_RUN))
    rl = r.get("rl") or {}
    if rl.get("plots"):
        b, a = rl["before"], rl["after"]
        plots = " ".join(_img(rl["plots"][k], k) for k in ("heldout_accuracy", "response_length") if k in rl["plots"])
        rows.append(("RL accuracy and response-length curves", f"held-out {b['accuracy']:.1%} → {a['accuracy']:.1%} "
                     f"(n={a['n']}); mean response {b['response_len']:.1f} → {a['response_len']:.1f} tokens {plots}"))
    else:
        rows.append(("RL accuracy and response-length curves", NOT_RUN))
    rh = d.get("reward_hacking")
    rows.append(("reward hacking (RLHF against a learned reward model)", _img(rh["png"], "reward hacking") if rh
                 else f"{NOT_RUN} in this run (`jaxllm run rlhf_reward_hacking` shows it)"))
    ar = d.get("arena")
    if ar:
        board = "; ".join(f"{x['model']} {x['bt']:.0f} [{x['bt_lo']:.0f}, {x['bt_hi']:.0f}] "
                          f"({x['wins']}W/{x['losses']}L/{x['ties']}T)" for x in ar["rows"])
        rows.append(("arena leaderboard of the run's checkpoints", f"Bradley–Terry (Elo scale, 95% bootstrap CI): {board}. "
                     f"{ar['battles']} battles on {ar['prompts']} prompts, judged by a {ar['judge']}. "
                     + _img(ar["png"], "arena")))
    else:
        rows.append(("arena leaderboard of the run's checkpoints", NOT_RUN))
    lines = ["## Demonstrations", "", "What the video shows, on this run's own models. "
             + (f"The demos stage took {d['seconds']} s." if d.get("seconds") else
                f"The demos stage did not run: rows say '{NOT_RUN}'."), "",
             "| demonstration | result |", "|---|---|"]
    lines += [f"| {name} | {text} |" for name, text in rows]
    return "\n".join(lines + [""] + details)


def render_report(ctx: RunContext) -> str:
    r, cfg, run_dir = ctx.results, ctx.cfg, ctx.run_dir
    lines = [f"# Run report: {cfg.name}", "", f"Run directory: `{run_dir}`", ""]
    if cfg.notes:
        lines += [cfg.notes, ""]
    lines += ["## Stages", "", "| stage | seconds |", "|---|---|"]
    lines += [f"| {name} | {res.get('seconds', '')} |" for name, res in r.items() if isinstance(res, dict)]
    lines.append("")
    if "data" in r:
        d = r["data"]
        lines += ["## Data", "", f"Sources: {', '.join(d.get('sources', []))}", "",
                  "| split | documents | UTF-8 bytes |", "|---|---|---|"]
        for split in ("train", "validation"):
            if split in d:
                lines.append(f"| {split} | {d[split]['documents']:,} | {d[split]['bytes']:,} |")
        lines.append("")
    if "tokenizer" in r:
        t = r["tokenizer"]
        merges = ", ".join(f"`{a!r}+{b!r}`" for a, b in t.get("first_merges", []))
        lines += ["## Tokenizer", "", f"Byte-level BPE, vocabulary {t['vocab_size']:,} (with special tokens); "
                  f"{t['val_tokens_per_byte']:.4f} tokens per byte on validation text.", "",
                  f"First merges: {merges}", ""]
    if "shards" in r:
        s = r["shards"]
        lines += ["## Token shards", "", "| split | documents | tokens | bytes |", "|---|---|---|---|"]
        for split, v in s.items():
            if isinstance(v, dict) and "tokens" in v:
                lines.append(f"| {split} | {v['documents']:,} | {v['tokens']:,} | {v['bytes']:,} |")
        lines.append("")
    if "pretrain" in r:
        p = r["pretrain"]
        m = cfg.model
        lines += ["## Pretraining", "",
                  f"Model: {m.family}, {m.n_layers} layers, d_model {m.d_model}, {m.n_heads} heads "
                  f"({m.n_kv_heads} kv), context {m.max_seq_len}, {p.get('params', 0):,} parameters.", "",
                  f"{p['steps']} steps in {p['train_seconds']} s of training"
                  + (" (stopped by the time budget)" if p.get("stopped_by_time_budget") else "")
                  + f"; final validation loss {p['val_loss']:.4f} nats/token, **{p['val_bpb']:.4f} bits per byte**.", ""]
        for png in ("loss.png", "val_bpb.png"):
            path = run_dir / "pretrain" / png
            if path.exists():
                lines += [f"![{png}]({_rel(path, run_dir)})", ""]
        if p.get("samples"):
            lines += ["Samples at the end of pretraining:", ""]
            lines += [f"- `{s!r}`" for s in p["samples"]]
            lines.append("")
    if "evaluate" in r:
        e = r["evaluate"]
        lines += ["## Evaluation", "", "| model | validation bits per byte |", "|---|---|",
                  f"| token unigram (add-one, train counts) | {e['unigram_bpb']:.4f} |",
                  f"| this run | {e['val_bpb']:.4f} |", "",
                  f"(over {e['eval_tokens']:,.0f} validation target tokens)", ""]
        if e.get("resamples"):
            lines += ["The same prefix sampled four times (the model is a stochastic document simulator):", ""]
            lines += [f"- `{s!r}`" for s in e["resamples"]]
            lines.append("")
    extra = [k for k in r if k not in ("data", "tokenizer", "shards", "pretrain", "evaluate", "demos", "report")]
    for name in extra:
        section = r[name]
        if isinstance(section, dict) and section.get("report_md"):
            lines += [section["report_md"], ""]
    table = eval_table_md(r)
    if table:
        lines += [table, ""]
    if "demos" in r or "demos" in cfg.stages:
        lines += [demos_md(r, run_dir), ""]
    lines += ["## Config", "", "```json", to_json(cfg), "```", ""]
    return "\n".join(lines)


def report_stage(ctx: RunContext) -> dict:
    path = ctx.run_dir / "report.md"
    if jax.process_index() == 0:
        path.write_text(render_report(ctx))
    return {"path": str(path)}
