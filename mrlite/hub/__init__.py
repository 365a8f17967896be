"""Sharing and watching a run: the Hugging Face Hub upload with model and dataset cards, and the trackers that
receive training curves.

Exercised by: ``mrlite push runs/smoke --iter 1 --repo me/smoke --dry-run /tmp/card``.
"""
