"""CAE's part of its model cards: what to do with the outputs (the linear-probe and the fine-tuning feature) and
which paper a card without a release cites (v1 or v2). `hf_mim.hub.model_cards` builds the rest of a card (layout,
metadata, facts, license, citation) from the release table; `register_model(..., card=CAE_CARD)` in
`hf_mim/__init__.py` hands this text to it."""

from ...hub.model_cards import CardText, image_feature_usage
from ...hub.releases import CAE_PAPER, CAEV2_PAPER, Paper


def output_lines(config=None) -> list[str]:
    """What to do with `outputs`."""
    return [
        "linear_probe_feature = outputs.pooler_output  # cls token after the final LayerNorm (CAE's linear probe)",
        "tokens = outputs.last_hidden_state  # [cls, patches row-major] after the final LayerNorm",
    ]


def usage(repo_id: str, config=None, remote: bool = False) -> str:
    lines = output_lines(config)
    if not remote:  # with hf_mim installed: the other pooling, as a loading argument
        lines += [
            "",
            f'model = AutoModel.from_pretrained("{repo_id}", pooling="mean").eval()  # or config.pooling = "mean"',
            'finetune_feature = model(**processor(images=image, return_tensors="pt")).pooler_output'
            "  # final LayerNorm of the mean patch token",
        ]
    return image_feature_usage(repo_id, lines, remote)


def paper(config=None) -> Paper:
    return CAEV2_PAPER if getattr(config, "cae_version", 1) == 2 else CAE_PAPER


CAE_CARD = CardText(method="cae", usage=usage, paper=paper)
