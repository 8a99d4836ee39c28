"""Arena: pairwise battles between models, online Elo and Bradley–Terry ratings with bootstrap CIs (like LM Arena).

A battle is (model_a, model_b, outcome) with outcome 1.0 = a wins, 0.0 = b wins, 0.5 = tie.
Ratings are on the Elo scale: P(a beats b) = 1 / (1 + 10 ** ((R_b - R_a) / 400)), anchored so the
mean rating is 1000. Bradley–Terry is the maximum-likelihood fit of that model to all battles (ties
count half a win each way), order-independent; online Elo depends on battle order, so its bootstrap
also reshuffles. Battles come from `run_battles` (answers judged by a model judge or a voter function)
or `simulate_battles` (known strengths, for tests and demos).
"""
from __future__ import annotations

import itertools
import math
import random
from typing import Callable, Optional, Sequence

import numpy as np

Battle = tuple[str, str, float]
SCALE, BASE, INIT = 400.0, 10.0, 1000.0


def _names(battles: Sequence[Battle], models: Optional[Sequence[str]] = None) -> list[str]:
    return list(models) if models is not None else sorted({m for a, b, _ in battles for m in (a, b)})


def elo_ratings(battles: Sequence[Battle], models: Optional[Sequence[str]] = None, k: float = 4.0) -> dict[str, float]:
    """Online Elo in battle order (K-factor k), shifted so the mean is 1000."""
    names = _names(battles, models)
    r = {m: INIT for m in names}
    for a, b, s in battles:
        ea = 1.0 / (1.0 + BASE ** ((r[b] - r[a]) / SCALE))
        r[a] += k * (s - ea)
        r[b] -= k * (s - ea)
    shift = INIT - float(np.mean(list(r.values()))) if r else 0.0
    return {m: v + shift for m, v in r.items()}


def bradley_terry(battles: Sequence[Battle], models: Optional[Sequence[str]] = None, l2: float = 1e-4,
                  iters: int = 100) -> dict[str, float]:
    """Maximum-likelihood Bradley–Terry ratings (Newton's method on the logistic loss, tiny L2 for
    models that never lose), on the Elo scale with mean 1000."""
    names = _names(battles, models)
    idx = {m: i for i, m in enumerate(names)}
    n = len(names)
    if n == 0:
        return {}
    ia = np.array([idx[a] for a, _, _ in battles], np.int64)
    ib = np.array([idx[b] for _, b, _ in battles], np.int64)
    y = np.array([s for _, _, s in battles], np.float64)
    theta = np.zeros(n)
    for _ in range(iters):
        p = 1.0 / (1.0 + np.exp(-(theta[ia] - theta[ib])))
        g = np.zeros(n)
        np.add.at(g, ia, p - y)
        np.add.at(g, ib, y - p)
        g += l2 * theta
        w = p * (1 - p)
        h = np.zeros((n, n))
        np.add.at(h, (ia, ia), w)
        np.add.at(h, (ib, ib), w)
        np.add.at(h, (ia, ib), -w)
        np.add.at(h, (ib, ia), -w)
        h += l2 * np.eye(n) + 1e-9 * np.ones((n, n))  # the ones fix the free additive constant
        step = np.linalg.solve(h, g)
        theta -= step
        theta -= theta.mean()
        if np.max(np.abs(step)) < 1e-10:
            break
    ratings = INIT + theta * SCALE / math.log(BASE)
    return {m: float(ratings[idx[m]]) for m in names}


def bootstrap(battles: Sequence[Battle], rate: Callable[[Sequence[Battle]], dict[str, float]], rounds: int = 200,
              seed: int = 0, shuffle: bool = False) -> dict[str, dict[str, float]]:
    """{model: {"median", "lo", "hi"}}: 95% percentile intervals over battles resampled with replacement."""
    rng = np.random.default_rng(seed)
    names = _names(battles)
    samples = {m: [] for m in names}
    n = len(battles)
    for _ in range(rounds):
        pick = rng.integers(0, n, n)
        if not shuffle:
            pick.sort()
        r = rate([battles[i] for i in pick])
        for m in names:
            if m in r:
                samples[m].append(r[m])
    return {m: {"median": float(np.median(v)), "lo": float(np.percentile(v, 2.5)), "hi": float(np.percentile(v, 97.5))}
            for m, v in samples.items() if v}


def leaderboard(battles: Sequence[Battle], rounds: int = 200, seed: int = 0, k: float = 4.0) -> list[dict]:
    """Rows sorted by Bradley–Terry rating: model, bt, bt_lo, bt_hi, elo, elo_lo, elo_hi, wins, losses, ties."""
    names = _names(battles)
    bt = bradley_terry(battles, names)
    elo = elo_ratings(battles, names, k)
    bt_ci = bootstrap(battles, lambda b: bradley_terry(b, names), rounds, seed)
    elo_ci = bootstrap(battles, lambda b: elo_ratings(b, names, k), rounds, seed, shuffle=True)
    rows = []
    for m in names:
        w = sum((a == m and s == 1.0) or (b == m and s == 0.0) for a, b, s in battles)
        t = sum(s == 0.5 and m in (a, b) for a, b, s in battles)
        games = sum(m in (a, b) for a, b, _ in battles)
        rows.append({"model": m, "bt": bt[m], "bt_lo": bt_ci[m]["lo"], "bt_hi": bt_ci[m]["hi"], "elo": elo[m],
                     "elo_lo": elo_ci[m]["lo"], "elo_hi": elo_ci[m]["hi"], "wins": w, "losses": games - w - t,
                     "ties": t, "games": games})
    return sorted(rows, key=lambda r: -r["bt"])


def simulate_battles(strengths: dict[str, float], n: int, seed: int = 0, tie_margin: float = 0.0) -> list[Battle]:
    """n battles between random pairs, won with the Bradley–Terry probability of the given Elo-scale
    strengths; with tie_margin > 0, outcomes whose win probability is within tie_margin of 0.5 may tie."""
    rng = random.Random(seed)
    names = sorted(strengths)
    out = []
    for _ in range(n):
        a, b = rng.sample(names, 2)
        p = 1.0 / (1.0 + BASE ** ((strengths[b] - strengths[a]) / SCALE))
        u = rng.random()
        if tie_margin and abs(u - p) < tie_margin:
            out.append((a, b, 0.5))
        else:
            out.append((a, b, 1.0 if u < p else 0.0))
    return out


# ---------------------------------------------------------------- battles between real models
def run_battles(answers: dict[str, Sequence[str]], prompts: Sequence[str],
                judge: Callable[[str, str, str], float], pairs: Optional[Sequence[tuple[str, str]]] = None,
                seed: int = 0) -> list[Battle]:
    """Battles from each model's answers to the same prompts: every pair (or `pairs`) on every prompt,
    sides shuffled; `judge(prompt, answer_a, answer_b)` returns 1 / 0 / 0.5 (e.g. `judge.pairwise` or a voter)."""
    rng = random.Random(seed)
    names = sorted(answers)
    out = []
    for i, prompt in enumerate(prompts):
        for a, b in (pairs or list(itertools.combinations(names, 2))):
            if rng.random() < 0.5:
                a, b = b, a
            out.append((a, b, float(judge(prompt, answers[a][i], answers[b][i]))))
    return out


def collect_answers(models: dict, prompts: Sequence[str], max_new_tokens: int = 64, temperature: float = 0.0,
                    seed: int = 0) -> dict[str, list[str]]:
    """Each EvalModel's replies to the prompts ({name: [reply per prompt]}), for run_battles."""
    from jaxllm.eval.behaviour import ask

    return {name: ask(m, list(prompts), temperature=temperature, seed=seed, max_new_tokens=max_new_tokens)
            for name, m in models.items()}


def reference_voter(references: dict[str, Callable[[str], bool]]) -> Callable[[str, str, str], float]:
    """A simulated voter: prefers the answer its check accepts (`references[prompt](answer)`), else a tie."""
    def vote(prompt: str, a: str, b: str) -> float:
        ok_a, ok_b = references[prompt](a), references[prompt](b)
        return 0.5 if ok_a == ok_b else (1.0 if ok_a else 0.0)
    return vote


def model_arena(models: dict, prompts: Sequence[str], judge: Optional[Callable[[str, str, str], float]] = None,
                checks: Optional[dict[str, Callable[[str], bool]]] = None, out_png=None, rounds: int = 200,
                seed: int = 0) -> dict:
    """Answers from every model (e.g. a run's checkpoints as EvalModels), all-pairs battles judged by
    `judge` (e.g. judge.pairwise_judge(model)) or, without one, by `reference_voter(checks)`; returns
    {"rows": leaderboard, "battles", "answers"} and writes the leaderboard PNG when out_png is given."""
    if judge is None:
        if checks is None:
            raise ValueError("model_arena: give a judge or answer checks for the reference voter")
        judge = reference_voter(checks)
    answers = collect_answers(models, prompts, seed=seed)
    battles = run_battles(answers, prompts, judge, seed=seed)
    rows = leaderboard(battles, rounds=rounds, seed=seed)
    if out_png is not None:
        plot_leaderboard(rows, out_png)
    return {"rows": rows, "battles": battles, "answers": answers}


def plot_leaderboard(rows: Sequence[dict], path, title: str = "arena leaderboard (Bradley–Terry, 95% CI)"):
    """Horizontal bars of BT ratings with bootstrap intervals; writes a PNG and returns its path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(rows)[::-1]
    fig, ax = plt.subplots(figsize=(6, 0.45 * len(rows) + 1.2))
    y = np.arange(len(rows))
    bt = np.array([r["bt"] for r in rows])
    err = np.array([[r["bt"] - r["bt_lo"] for r in rows], [r["bt_hi"] - r["bt"] for r in rows]])
    ax.errorbar(bt, y, xerr=np.maximum(err, 0), fmt="o", capsize=4)
    ax.set_yticks(y, [r["model"] for r in rows])
    ax.axvline(INIT, color="gray", lw=0.5)
    ax.set_xlabel("rating (Elo scale)")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
