"""Pure core of the loop: parsing judge outputs, prompt templates, pair selection and diagnostics (no torch;
numpy at most).

Exercised by: ``mrlite run recipes/smoke.yaml``.
"""
