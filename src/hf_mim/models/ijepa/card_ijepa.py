"""I-JEPA's part of its model cards: what to do with the outputs. `hf_mim.hub.model_cards` builds the rest of a card
(layout, metadata, facts, license, citation) from the release table; `register_model(..., card=IJEPA_CARD)` in
`hf_mim/__init__.py` hands this text to it."""

from ...hub.model_cards import CardText, image_feature_usage


def output_lines(config=None) -> list[str]:
    """What to do with `outputs`."""
    return ["embedding = outputs.pooler_output  # average-pooled patch tokens, I-JEPA's representation"]


def usage(repo_id: str, config=None, remote: bool = False) -> str:
    return image_feature_usage(repo_id, output_lines(config), remote)


IJEPA_CARD = CardText(method="ijepa", usage=usage)
