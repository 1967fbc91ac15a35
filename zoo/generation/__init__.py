"""Generation: sampling with a KV cache and the GPT-2 tokenizer."""
