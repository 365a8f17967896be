"""Facts about the machine and the model's size: GPUs (nvidia-smi first, torch only when asked), CPU bf16
support, model shapes and weight sizes, GPU interconnect.

Exercised by: ``mrlite doctor``.
"""
