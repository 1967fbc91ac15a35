"""The ``hf`` format: Hugging Face model directories (GPT-2 and the other checkpoint families, and
the translator as a MarianMTModel)."""
