"""DeepSpeed ZeRO-3 helpers.

Once a `TrainingArguments` with a ZeRO-3 config exists, transformers builds and loads every `PreTrainedModel` inside
`deepspeed.zero.Init` (parameters partitioned over ranks, a collective step). That is wrong for models that must stay
whole on one rank: a frozen target network kept outside the DeepSpeed engine (CAE's tokenizer / CLIP teacher), or
the backbone that rank 0 alone re-loads to export it after training (every rank would have to join the collective).
"""

from contextlib import contextmanager


@contextmanager
def without_zero3_init():
    """Build or load models whole inside this block, even when a ZeRO-3 TrainingArguments is active."""
    from transformers.integrations import deepspeed as hf_deepspeed

    saved = hf_deepspeed._hf_deepspeed_config_weak_ref
    hf_deepspeed.unset_hf_deepspeed_config()
    try:
        yield
    finally:
        hf_deepspeed._hf_deepspeed_config_weak_ref = saved
