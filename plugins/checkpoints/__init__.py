"""Built-in Hugging Face checkpoint formats: GPT-2, Llama, Qwen2, GPT-NeoX and Marian, one plugin
module each, registered through ``zoo_register_checkpoint_formats`` as a third party would."""

from zoo import hookimpl
from zoo.plugins.checkpoints.gpt2 import GPT2
from zoo.plugins.checkpoints.gpt_neox import GPT_NEOX
from zoo.plugins.checkpoints.llama import LLAMA
from zoo.plugins.checkpoints.marian import MARIAN
from zoo.plugins.checkpoints.qwen2 import QWEN2

FORMATS = (GPT2, LLAMA, QWEN2, GPT_NEOX, MARIAN)


@hookimpl
def zoo_register_checkpoint_formats(registry):
    for fmt in FORMATS:
        registry.add("checkpoint_format", fmt.model_type, fmt)
