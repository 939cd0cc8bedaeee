"""VICRegL's part of its model cards: what to do with the outputs. `hf_mim.hub.model_cards` builds the rest of a card
(layout, metadata, facts, license, citation) from the release table; `register_model(..., card=VICREGL_CARD)` in
`hf_mim/__init__.py` hands this text to it."""

from ...hub.model_cards import CardText, image_feature_usage


def output_lines(config=None) -> list[str]:
    """What to do with `outputs` (comments give shapes for this config)."""
    width = config.representation_size if config is not None else "C"
    return [
        f"representation = outputs.pooler_output  # (1, {width}) VICRegL's global representation",
        f"dense = outputs.feature_map  # (1, h, w, {width}) VICRegL's dense (local) features",
    ]


def usage(repo_id: str, config=None, remote: bool = False) -> str:
    return image_feature_usage(repo_id, output_lines(config), remote)


VICREGL_CARD = CardText(method="vicregl", usage=usage)
