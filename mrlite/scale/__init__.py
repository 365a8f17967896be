"""Past one process: generation workers that share a stage's chunks, and training under accelerate launch.

Exercised by: ``mrlite run recipes/smoke.yaml --set backends.hf.workers=2``.
"""
