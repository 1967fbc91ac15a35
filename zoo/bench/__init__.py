"""``zoo bench``: the zoo against Hugging Face and against the machine's own ceilings."""
