"""Hugging Face: checkpoint reading, name tables and config mapping, parity checks against transformers."""
