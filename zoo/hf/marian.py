"""A zoo translator's shared vocabulary as a Hugging Face tokenizer (for ``MarianMTModel``
exports, ``zoo verify`` and the web folder). The weights and ``config.json`` of the Marian
family are the ``marian`` checkpoint format's (``plugins/checkpoints/marian.py``)."""

from __future__ import annotations

from pathlib import Path

from zoo.core.files import TARGET_TOKENIZER, TOKENIZER


def shared_vocabulary_problem(directory: Path) -> str | None:
    """Why the vocabulary in run ``directory`` cannot become one Hugging Face tokenizer, or None."""
    if (directory / TARGET_TOKENIZER).is_file():
        return (f"{directory} has a per-language vocabulary ({TARGET_TOKENIZER}), which no single Hugging Face "
                "tokenizer can hold; train with the shared vocabulary (the default) to export it")
    if not (directory / TOKENIZER).is_file():
        return f"{directory} holds no {TOKENIZER}; export a run directory written by 'zoo train'"
    return None


def marian_tokenizer(source, context_length: int):
    """A ``PreTrainedTokenizerFast`` around the zoo's shared ``tokenizers`` vocabulary ``source``:
    encoding adds ``</s>`` as the zoo's ``encode_source`` does, decoding drops special tokens."""
    from tokenizers import Tokenizer, processors
    from transformers import PreTrainedTokenizerFast

    from zoo.translation.vocabulary import EOS_ID

    tokenizer = Tokenizer.from_str(source.to_str())
    tokenizer.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>",
                                                             special_tokens=[("</s>", EOS_ID)])
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>", model_max_length=context_length, padding_side="right",
                                   model_input_names=["input_ids", "attention_mask"],
                                   clean_up_tokenization_spaces=False)


def save_marian_tokenizer(source, context_length: int, out: Path) -> list[str]:
    """Write :func:`marian_tokenizer` into ``out``; return the names of the files it wrote."""
    before = set(out.iterdir())
    marian_tokenizer(source, context_length).save_pretrained(out)
    return sorted(p.name for p in set(out.iterdir()) - before)
