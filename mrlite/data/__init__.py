"""Prompt and EFT data: the shipped sets (package data next to this file), sources that read them or other files
and Hub datasets, and generators that build new rows with a model.

Exercised by: ``mrlite data check builtin``.
"""
