"""PandaGPT for training: a frozen LLaMA with a LoRA adapter, and the projector `llama_proj`.

The attribute names are the original's (`llama_model` = the PEFT model, `llama_proj`), so the
trainable parameters' names are exactly the keys of PandaGPT's delta checkpoint
(`llama_proj.weight`, `llama_model.base_model.model.model.layers.{i}.self_attn.{q,k,v,o}_proj
.lora_{A,B}.default.weight`). ImageBind is not part of the module: its features come from the
cache (training/features.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from service.families.base import LoraSpec
from training.sequences import IGNORE

if TYPE_CHECKING:
    from peft import LoraConfig


class PandaGPTForTraining(nn.Module):
    def __init__(
        self,
        llm_dir: Path,
        prefix_ids: list[int],
        lora: LoraSpec,
        feature_dim: int = 1024,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__()
        from peft import get_peft_model
        from transformers import AutoModelForCausalLM

        # Loaded straight in the training precision: a 13B model never exists in fp32.
        base = AutoModelForCausalLM.from_pretrained(llm_dir, dtype=dtype)
        base.requires_grad_(False)
        config = peft_config(lora)
        # autocast off: PEFT would make the adapter fp32 inside an fp16 model; DeepSpeed keeps
        # the fp32 master copy of the trainable parameters itself.
        self.llama_model = get_peft_model(base, config, autocast_adapter_dtype=False)
        self.llama_proj = nn.Linear(feature_dim, base.config.hidden_size, dtype=dtype)
        self.register_buffer("prefix_ids", torch.tensor(prefix_ids, dtype=torch.long), persistent=False)

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """The trainable parameters under the original delta's key names."""
        return {name: p.detach() for name, p in self.named_parameters() if p.requires_grad}

    def forward(
        self,
        features: torch.Tensor,
        input_ids: torch.Tensor,
        labels: torch.Tensor,
        attention_mask: torch.Tensor,
    ) -> torch.Tensor:
        """Mean shifted cross-entropy over the target tokens. features [B, 1024]; the rest [B, T]."""
        embed = self.llama_model.get_input_embeddings()
        batch = input_ids.shape[0]
        prefix = embed(self.prefix_ids).expand(batch, -1, -1)
        image = self.llama_proj(features.to(self.llama_proj.weight.dtype)).unsqueeze(1)
        inputs_embeds = torch.cat([prefix, image, embed(input_ids)], dim=1)
        head = prefix.shape[1] + 1  # BOS + "### Human: <Img>" + the image vector: never targets
        full_labels = torch.cat([labels.new_full((batch, head), IGNORE), labels], dim=1)
        full_mask = torch.cat([attention_mask.new_ones((batch, head)), attention_mask], dim=1)
        logits = self.llama_model(inputs_embeds=inputs_embeds, attention_mask=full_mask).logits
        return shifted_cross_entropy(logits, full_labels)


def peft_config(lora: LoraSpec, **extra: Any) -> LoraConfig:
    """PEFT's config of a family's adapter: no bias, a causal LM, as the original made it."""
    from peft import LoraConfig

    return LoraConfig(
        r=lora.rank,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=list(lora.targets),
        bias="none",
        task_type="CAUSAL_LM",
        **extra,
    )


def shifted_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Position t predicts token t+1; -100 is ignored; the mean over the remaining tokens (HF's
    LlamaForCausalLM loss, computed in fp32)."""
    return nn.functional.cross_entropy(
        logits[:, :-1].float().reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1), ignore_index=IGNORE
    )
