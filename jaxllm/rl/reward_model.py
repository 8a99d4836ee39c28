"""A reward model: the policy's Transformer backbone with a scalar head on the last real token.

Params are `{"backbone": <the policy's param tree, unchanged>, "head": {"kernel": [embed], "bias": []}}`,
so a reward model starts from any policy checkpoint (`init_reward_params`). The backbone's final
hidden state (the output of `final_norm`) is read with flax's `capture_intermediates`, without
changing the model; under jit the unused vocabulary projection is dead code and is removed.

A batch of rankings is k rows per group, group after group: inputs, segment_ids (1 on real tokens),
loss_mask (1 only at each row's last real token, where the score is read, so a step's token count is
its candidate count) and rank (each candidate's place in its group, 0 = best, broadcast along the row),
all [groups * k, length] so they shard like any other batch.
"""
from __future__ import annotations

from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxllm.model import ModelConfig, Transformer
from jaxllm.rl.preferences import RANKING_LOSSES, Ranking

Array = jax.Array


def _is_final_norm(mdl: nn.Module, method_name: str) -> bool:
    return mdl.name == "final_norm" and method_name == "__call__"


def final_hidden(model: Transformer, backbone, inputs: Array, segment_ids: Array | None = None) -> Array:
    """The backbone's normalised last hidden states [batch, length, embed] (float32)."""
    _, state = model.apply({"params": backbone}, inputs, segment_ids=segment_ids,
                           capture_intermediates=_is_final_norm, mutable=["intermediates"])
    return state["intermediates"]["final_norm"]["__call__"][0].astype(jnp.float32)


def reward_scores(model: Transformer, params, inputs: Array, segment_ids: Array) -> Array:
    """Scalar reward per row [batch]: head(hidden state at the last token with segment_ids != 0)."""
    h = final_hidden(model, params["backbone"], inputs, segment_ids)  # [batch, length, embed]
    last = jnp.maximum(jnp.sum(segment_ids != 0, axis=-1) - 1, 0)  # [batch]
    h_last = jnp.take_along_axis(h, last[:, None, None], axis=1)[:, 0]  # [batch, embed]
    head = params["head"]
    return h_last @ head["kernel"].astype(jnp.float32) + head["bias"].astype(jnp.float32)


def init_head(rng: Array, d_model: int, std: float = 0.0):
    """The scalar head, boxed with logical axes (kernel [embed], bias []) so it shards like the backbone."""
    kernel = std * jax.random.normal(rng, (d_model,), jnp.float32)
    return {"kernel": nn.LogicallyPartitioned(kernel, ("embed",)),
            "bias": nn.LogicallyPartitioned(jnp.zeros((), jnp.float32), ())}


def init_reward_params(model_cfg: ModelConfig, policy_params, rng: Array, head_std: float = 0.0):
    """Boxed reward-model params starting from `policy_params` (a policy checkpoint's tree)."""
    model = Transformer(model_cfg)
    dummy = jnp.zeros((1, min(8, model_cfg.max_seq_len)), jnp.int32)
    boxed = model.init(rng, dummy)["params"]
    backbone = jax.tree.map(
        lambda box, w: box.replace_boxed(jnp.asarray(w, box.unbox().dtype))
        if isinstance(box, nn.LogicallyPartitioned) else jnp.asarray(w),
        boxed, policy_params, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
    return {"backbone": backbone, "head": init_head(jax.random.fold_in(rng, 1), model_cfg.d_model, head_std)}


def ranking_loss_fn(model: Transformer, k: int, loss: str = "bradley_terry") -> Callable:
    """`loss_fn(params, batch)` for the jitted train step: a ranking loss on groups of k rows."""
    if loss not in RANKING_LOSSES:
        raise ValueError(f"reward-model loss {loss!r}: choose one of {sorted(RANKING_LOSSES)}")
    rank_loss = RANKING_LOSSES[loss]

    def loss_fn(params, batch):
        scores = reward_scores(model, params, batch["inputs"], batch["segment_ids"]).reshape(-1, k)  # [groups, k]
        order = jnp.argsort(batch["rank"][:, 0].reshape(-1, k), axis=-1)  # candidate indices best first
        value = rank_loss(scores, order)
        return value, {"nll": value}

    return loss_fn


def encode_rows(encode: Callable[[str], list[int]], bos_id: int, prompts: list[str], completions: list[str],
                seq_len: int, sep: str = " ") -> tuple[np.ndarray, np.ndarray]:
    """[bos] + prompt + completion, right-padded: inputs and segment_ids int32 [rows, seq_len].

    Texts too long are cut from the left of the prompt side, keeping the completion's end (where the
    score is read); a completion that alone exceeds seq_len - 1 keeps its last tokens.
    """
    inputs = np.zeros((len(prompts), seq_len), np.int32)
    segs = np.zeros((len(prompts), seq_len), np.int32)
    for i, (p, c) in enumerate(zip(prompts, completions)):
        ids = [bos_id] + encode(p + sep + c if p else c)
        if len(ids) > seq_len:
            ids = [bos_id] + ids[-(seq_len - 1):]
        inputs[i, :len(ids)] = ids
        segs[i, :len(ids)] = 1
    return inputs, segs


def ranking_batch(rankings: list[Ranking], encode: Callable, bos_id: int, seq_len: int) -> dict:
    """A reward-model batch from rankings that all have the same k (see the module docstring)."""
    ks = {len(r.candidates) for r in rankings}
    if len(ks) != 1:
        raise ValueError(f"ranking_batch: rankings have different numbers of candidates {sorted(ks)}; "
                         "group them by k (or pad by dropping candidates)")
    prompts = [r.prompt for r in rankings for _ in r.candidates]
    completions = [c for r in rankings for c in r.candidates]
    inputs, segs = encode_rows(encode, bos_id, prompts, completions, seq_len)
    rank = np.zeros_like(inputs)
    for g, r in enumerate(rankings):
        k = len(r.candidates)
        for place, idx in enumerate(r.ranking):
            rank[g * k + idx] = place
    loss_mask = np.zeros_like(inputs)
    loss_mask[np.arange(len(inputs)), segs.sum(-1) - 1] = 1
    return {"inputs": inputs, "segment_ids": segs, "loss_mask": loss_mask, "rank": rank}
