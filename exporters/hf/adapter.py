"""A LoRA run's adapter as a PEFT folder for the exported Hugging Face base model.

    zoo export RUN --format hf --adapter -o OUT      # OUT: the frozen base; OUT/adapter: the adapter
    PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(OUT), OUT/adapter)

The zoo trains its adapter on its own layers (a fused ``c_attn``, SwiGLU's fused
``c_fc``); Hugging Face families split some of them (``q_proj``/``k_proj``/``v_proj``,
``gate_proj``/``up_proj``). Every transform of a checkpoint format's weight table acts on
the rows of a weight (a split, a permutation) or transposes it (GPT-2's Conv1D), so the
same transform applied to ``B`` gives each Hugging Face layer's ``B`` with ``A`` shared:
``split(B·A) = split(B)·A``. Conv1D layers keep ``A`` and ``B`` and set ``fan_in_fan_out``.
Verification loads base + adapter with transformers and PEFT and compares their logits
with the zoo's merged model.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from zoo.core.files import ADAPTER, ADAPTER_CONFIG, ADAPTER_WEIGHTS, TRAIN_CONFIG, read_json
from zoo.core.spec import ModelSpec
from zoo.errors import ExportError, first_line
from zoo.hf.formats import format_for_spec
from zoo.hf.transforms import Transposed

PREFIX = "base_model.model."  # PEFT's names for the wrapped model's modules
ATOL = 1e-4


def hf_adapter(spec: ModelSpec, adapter: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """The adapter in folder ``adapter`` (zoo's layer names) under the Hugging Face family's
    names: its tensors and the ``LoraConfig`` fields that differ from the zoo's."""
    from peft import LoraConfig

    config = LoraConfig.from_pretrained(str(adapter))
    tensors = load_file(str(adapter / ADAPTER_WEIGHTS))
    fmt = format_for_spec(spec)
    table = fmt.table(spec)
    out, modules, conv1d = {}, [], set()
    for module in sorted(config.target_modules):
        transform = table.get(f"{module}.weight")
        if transform is None:
            raise ExportError(f"{adapter}: the adapter's layer {module} has no {fmt.architecture} counterpart")
        a, b = tensors[f"{PREFIX}{module}.lora_A.weight"], tensors[f"{PREFIX}{module}.lora_B.weight"]
        transposed = isinstance(transform, Transposed)
        conv1d.add(transposed)
        parts = [b] if transposed else transform.to_hf(b, spec)
        for name, part in zip(transform.sources(), parts):
            hf_module = fmt.renamed.get(name, name).removesuffix(".weight")
            out[f"{PREFIX}{hf_module}.lora_A.weight"] = a.clone()
            out[f"{PREFIX}{hf_module}.lora_B.weight"] = part.contiguous()
            modules.append(hf_module)
    if len(conv1d) > 1:
        raise ExportError(f"{adapter}: the adapter mixes Conv1D and linear layers of {fmt.architecture}, which one "
                          "PEFT adapter cannot describe; train it on one kind (--lora-targets)")
    fields = {"target_modules": modules, "fan_in_fan_out": conv1d == {True}, "task_type": "CAUSAL_LM"}
    return out, {**config.to_dict(), **fields}


def write_hf_adapter(run_dir: Path, spec: ModelSpec, out: Path, verify: bool = True) -> dict:
    """Write ``run_dir``'s adapter into ``out/adapter`` for the base exported in ``out``; return its manifest entry."""
    from peft import LoraConfig

    adapter = run_dir / ADAPTER
    if not (adapter / ADAPTER_CONFIG).is_file():
        raise ExportError(f"{run_dir} has no adapter yet ({ADAPTER}/ is missing); train it first, "
                          f"e.g. zoo train --resume {run_dir}")
    tensors, fields = hf_adapter(spec, adapter)
    fields["base_model_name_or_path"] = base_model_name(run_dir)
    target = out / ADAPTER
    target.mkdir()
    save_file(tensors, str(target / ADAPTER_WEIGHTS), metadata={"format": "pt"})
    known = {k: v for k, v in fields.items() if k in LoraConfig.__dataclass_fields__ and k != "peft_type"}
    LoraConfig(**known).save_pretrained(str(target))
    record = {"folder": ADAPTER, "target_modules": len(fields["target_modules"]), "r": fields["r"],
              "lora_alpha": fields["lora_alpha"], "fan_in_fan_out": fields["fan_in_fan_out"]}
    if verify:
        record["verification"] = verify_adapter(run_dir, spec, out)
    return record


def base_model_name(run_dir: Path) -> str | None:
    """The hub id the run's base came from, when it names one (PEFT records it; loading does not need it)."""
    weights = read_json(run_dir / TRAIN_CONFIG).get("weights")
    return weights if weights and weights != "hf" and not Path(weights).exists() else None


def verify_adapter(run_dir: Path, spec: ModelSpec, out: Path) -> dict:
    """transformers + PEFT (base + adapter) against the zoo's merged model, logits in fp32."""
    from peft import PeftModel

    from zoo.core.model_dir import load_model

    try:
        base = format_for_spec(spec).hf_class().from_pretrained(out, dtype=torch.float32).eval()
        theirs = PeftModel.from_pretrained(base, str(out / ADAPTER)).eval()
    except (OSError, ValueError, RuntimeError, KeyError) as exc:
        raise ExportError(f"PEFT cannot load the exported adapter of {run_dir}: {first_line(exc)}") from None
    ours = load_model(run_dir, dtype=torch.float32)
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, spec.vocab_size, (2, min(16, spec.context_length)), generator=generator)
    with torch.inference_mode():
        logits = theirs(ids).logits
        diff = (ours(ids) - logits).abs().max().item()
        with theirs.disable_adapter():
            effect = (logits - theirs(ids).logits).abs().max().item()  # what the adapter changes: the check's scale
    if diff > ATOL:
        raise ExportError(f"PEFT's base + adapter and the zoo's merged model disagree: max |difference| {diff:.2e} "
                          f"exceeds {ATOL}; nothing was written")
    return {"max_abs_diff": diff, "atol": ATOL, "against": "zoo's merged model", "adapter_effect": effect}
