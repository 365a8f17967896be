"""Token facts every backend shares, computed one way: a chat's template ids. Torch-free (it only calls the
tokenizer it is given). Exercised by: ``mrlite run recipes/tiny.yaml`` (the trainers' length filter).
"""

from __future__ import annotations


def chat_ids(tok, messages: list[dict], *, add_generation_prompt: bool) -> list[int]:
    """Token ids of ``messages`` with the tokenizer's chat template, applied once (it carries BOS itself).

    Args:
        tok: A Hugging Face tokenizer (or anything with ``apply_chat_template``).
        messages: The chat.
        add_generation_prompt: True for a prompt to generate from; False for a finished conversation (as TRL
            tokenises a training row).
    """
    ids = tok.apply_chat_template(messages, add_generation_prompt=add_generation_prompt, tokenize=True,
                                  return_dict=False)
    if hasattr(ids, "keys"):  # some tokenizers return a BatchEncoding regardless
        ids = ids["input_ids"]
    return list(ids)


__all__ = ["chat_ids"]
