"""The DALL-E tokenizer's part of its model cards: how to get codebook ids from images. `hf_mim.hub.model_cards`
builds the rest of a card (layout, metadata, facts, license, citation) from the release table;
`register_dalle_tokenizer` (models/cae/__init__.py) hands this text to it."""

from ...hub.model_cards import CardText, config_value


def usage(repo_id: str, config=None, remote: bool = False) -> str:
    size = config_value(config, "image_size", 112)
    if not remote:
        return f"""```python
import torch
import hf_mim  # registers the tokenizer with AutoModel
from hf_mim.models.cae.tokenizer_dalle import map_pixels
from transformers import AutoModel

tokenizer = AutoModel.from_pretrained("{repo_id}").eval()
images = torch.rand(1, 3, {size}, {size})  # RGB in [0, 1], no mean / std
ids = tokenizer.get_codebook_indices(map_pixels(images))  # (1, {(size // 8) ** 2}) int64, row-major
```"""
    return f"""```python
import torch
from transformers import AutoModel

tokenizer = AutoModel.from_pretrained("{repo_id}", trust_remote_code=True).eval()
images = torch.rand(1, 3, {size}, {size})
ids = tokenizer.get_codebook_indices(0.8 * images + 0.1)  # map_pixels: the logit-Laplace input mapping
```"""


DALLE_TOKENIZER_CARD = CardText(method="dalle_tokenizer", usage=usage)
