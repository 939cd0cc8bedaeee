"""CAPI's part of its model cards: what to do with the outputs. `hf_mim.hub.model_cards` builds the rest of a card
(layout, metadata, facts, license, citation) from the release table; `register_model(..., card=CAPI_CARD)` in
`hf_mim/__init__.py` hands this text to it."""

from ...hub.model_cards import CardText, config_value, image_feature_usage


def output_lines(config=None) -> list[str]:
    """What to do with `outputs` (comments give shapes for this config)."""
    width = config_value(config, "hidden_size", "D")
    patch = config_value(config, "patch_size", 14)
    registers = config_value(config, "num_register_tokens", "R")
    return [
        f"global_repr = outputs.pooler_output  # (1, {width}) CAPI's global representation",
        f"feature_map = outputs.feature_map  # (1, H/{patch}, W/{patch}, {width}) patch features",
        f"registers = outputs.register_tokens  # (1, {registers}, {width})",
    ]


def usage(repo_id: str, config=None, remote: bool = False) -> str:
    return image_feature_usage(repo_id, output_lines(config), remote)


CAPI_CARD = CardText(method="capi", usage=usage)
