"""Commands around a run: per-stage estimates (plan), the environment report (doctor) and benchmarks (bench).

Exercised by: ``mrlite plan recipes/paper.yaml --gpu-mem 24``.
"""
