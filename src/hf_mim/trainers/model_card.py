"""`create_model_card` for hf_mim's pretraining Trainer: the hf_mim card (hf_mim.hub.model_cards.training_card) instead of
transformers' generic one, plus the remote-code bundle, so a pushed run loads with or without hf_mim.

`Trainer.push_to_hub` (also called by `save_model` when `--push_to_hub` is set, which is how `run_<method>.py
--push_to_hub` uploads) saves the model, calls `create_model_card(model_name=..., **kwargs)` and uploads the output
folder: both the card and the code are in place before the upload."""

from pathlib import Path

from transformers.utils import logging

logger = logging.get_logger(__name__)


class ModelCardMixin:
    """List it before `transformers.Trainer`."""

    def create_model_card(
        self,
        language: str | None = None,
        license: str | None = None,
        tags: str | list[str] | None = None,
        model_name: str | None = None,
        finetuned_from: str | None = None,
        tasks: str | list[str] | None = None,
        dataset_tags: str | list[str] | None = None,
        dataset: str | list[str] | None = None,
        dataset_args: str | list[str] | None = None,
        remote_code: bool = True,
    ) -> None:
        """Write README.md (and, with `remote_code`, the code bundle + `auto_map`) into `args.output_dir`.

        transformers' arguments keep their meaning: `finetuned_from` is the base model (default: the Hub repo the
        model was loaded from, or the repo a converted local folder's card records), `license` overrides the base
        model's / method's, `dataset` names the training data and `dataset_tags` the Hub dataset ids; `language`,
        `tasks` and `dataset_args` do not apply to these vision models and are ignored."""
        if not self.is_world_process_zero():
            return
        from ..hub.model_cards import CARD_TEXTS, training_card

        model = self.accelerator.unwrap_model(self.model) if hasattr(self, "accelerator") else self.model
        if getattr(model.config, "model_type", None) not in CARD_TEXTS:  # not an hf_mim model: transformers' card
            return super().create_model_card(language=language, license=license, tags=tags, model_name=model_name,
                                             finetuned_from=finetuned_from, tasks=tasks, dataset_tags=dataset_tags,
                                             dataset=dataset, dataset_args=dataset_args)  # fmt: skip
        output_dir = Path(self.args.output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        if remote_code:
            if (output_dir / "config.json").is_file():
                from ..hub.remote_code import export_remote_code

                export_remote_code(output_dir)
            else:
                logger.warning("No config.json in %s yet: the remote-code bundle was not written.", output_dir)
        card = training_card(
            model,
            state=self.state,
            args=self.args,
            train_dataset=self.train_dataset,
            model_name=model_name,
            repo_id=getattr(self, "hub_model_id", None) or self.args.hub_model_id,
            base_model=finetuned_from,
            license=license,
            tags=[tags] if isinstance(tags, str) else list(tags or []),
            dataset=dataset,
            dataset_tags=dataset_tags,
            remote_code=remote_code and (output_dir / "config.json").is_file(),
        )
        card.save(output_dir / "README.md")
