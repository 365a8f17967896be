"""Evaluation of a run: answers per iteration, pairwise and length-controlled win rates, judges (local or an
OpenAI-compatible endpoint).

Exercised by: ``mrlite eval runs/smoke``.
"""
