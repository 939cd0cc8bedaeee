"""The body of `examples/pytorch/pretraining/run_<method>.py`, shared by every method (the scripts only describe
their method as a `PretrainingRecipe`). Follows transformers' `run_mae.py`: `HfArgumentParser` over model / data /
training dataclasses or one JSON file, datasets or image folders, resume from the last checkpoint."""

import json
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import datasets
import torch
import transformers
from transformers import AutoConfig, HfArgumentParser, set_seed

from ..data import SafeImageTransform, bundled_photo_dataset, pretraining_transform
from ..data.positional import drop_unreadable_rows
from ..hub.push import HubPushError, hub_repo_of, pushing_to
from ..hub.remote_code import export_remote_code
from ..image_processing_utils import image_processor_at
from ..presets.help import add_presets_help
from ..presets.lookup import resolve_config_name, resolve_config_name_or_exit
from ..training_defaults import logging_steps_for, options_given
from ..zero3 import without_zero3_init
from .arguments import default_dataloader_num_workers
from .checkpoints import RunFolderError, checkpoint_to_resume
from .learning_report import LearningReport
from .pretraining_trainer import CheckpointWriteError, NonFiniteLossError

logger = logging.getLogger(__name__)
DEFAULT_DEMO_STEPS = 300
LOADER_OPTIONS = ("dataloader_num_workers", "dataloader_persistent_workers")  # options whose defaults run() sets
# options whose defaults run() derives from others: the loader options above, and logging_steps from max_steps
DERIVED_OPTIONS = (*LOADER_OPTIONS, "logging_steps")


@dataclass
class PretrainingRecipe:
    """What a pretraining script needs to know about its method."""

    name: str
    config_class: type
    config_presets: dict[str, Callable]
    default_preset: str
    model_class: type
    image_processor_class: type
    trainer_class: type
    arguments_class: type
    collator: Callable  # pretraining model -> data collator (with the model's own mask generator)
    backbone: Callable  # pretraining model -> the PreTrainedModel exported as the backbone
    backbone_description: str
    crop_scale_min: float
    hflip: bool
    interpolation: str
    # Optional: a per-image transform factory `(config, data_args, image_size, *extra_args) -> transform` replacing
    # the single random-resized crop (VICRegL's multi-crop), extra argument dataclasses parsed from the command line
    # (passed to it), and a one-line architecture description for the backbone's model card.
    transform: Callable | None = None
    extra_argument_classes: tuple = ()
    describe: Callable | None = None
    # Optional: `(config, *extra_args) -> config` after the config is built (before the model), and
    # `(model, *extra_args) -> None` after the model is built (e.g. attaching CAE's frozen target network).
    configure: Callable | None = None
    attach: Callable | None = None
    # The command-line arguments of the embedded default (no data, no preset): the method's CPU recipe
    # (`hf_mim.presets.CPU_RECIPES`); the command line still wins.
    cpu_recipe: tuple[str, ...] = ()


@dataclass
class ModelArguments:
    model_name_or_path: str | None = field(
        default=None, metadata={"help": "Start from these weights (a converted release or an earlier run)."}
    )
    config_name: str | None = field(
        default=None, metadata={"help": "A preset (the table below), or a config folder / Hub id (owner/name)."}
    )
    config_overrides: str | None = field(
        default=None, metadata={"help": "Comma-separated overrides, e.g. 'hidden_size=128,num_hidden_layers=4'."}
    )


@dataclass
class DataTrainingArguments:
    dataset_name: str | None = field(default=None, metadata={"help": "A `datasets` name or local dataset script."})
    dataset_config_name: str | None = field(default=None)
    train_split: str = field(default="train")
    train_dir: str | None = field(default=None, metadata={"help": "An image folder (any nesting) to train on."})
    image_column_name: str = field(default="image")
    streaming: bool = field(default=False, metadata={"help": "Stream the dataset (needs --max_steps)."})
    max_train_samples: int | None = field(default=None)
    image_size: int | None = field(default=None, metadata={"help": "Crop size (default: config.image_size)."})
    crop_scale_min: float | None = field(default=None, metadata={"help": "RandomResizedCrop minimum scale."})
    bundled_dataset: str = field(
        default="digits",
        metadata={
            "help": "Embedded default data: 'digits' (scikit-learn's digits, the probe's training split) or 'photos' "
            "(about twenty photos bundled with scikit-image / scikit-learn)."
        },
    )
    learning_report: bool | None = field(
        default=None,
        metadata={
            "help": "Probe the backbone before and after training (k-NN and effective rank on held-out digits) and "
            "draw the PCA picture of its patch features. Default: on for the embedded default data."
        },
    )

    @property
    def has_data(self) -> bool:
        return bool(self.dataset_name or self.train_dir)


def build_config(recipe: PretrainingRecipe, model_args: ModelArguments):
    if model_args.model_name_or_path:
        config = AutoConfig.from_pretrained(model_args.model_name_or_path)
    else:
        name = model_args.config_name or recipe.default_preset
        name = resolve_config_name(name, recipe.config_presets, f"run_{recipe.name}.py")
        config = recipe.config_presets[name]() if name in recipe.config_presets else AutoConfig.from_pretrained(name)
    if not isinstance(config, recipe.config_class):
        raise ValueError(f"run_{recipe.name}.py needs a {recipe.config_class.__name__}, got {type(config).__name__}")
    if model_args.config_overrides:
        config.update_from_string(model_args.config_overrides)
        config.validate()  # update_from_string sets fields without re-checking them: fail now, with the field named
    return config


def load_training_data(data_args: DataTrainingArguments):
    if data_args.dataset_name:
        dataset = datasets.load_dataset(
            data_args.dataset_name,
            data_args.dataset_config_name,
            split=data_args.train_split,
            streaming=data_args.streaming,
        )
    elif data_args.train_dir:
        dataset = datasets.load_dataset(
            "imagefolder", data_dir=data_args.train_dir, split="train", streaming=data_args.streaming
        )
    elif data_args.bundled_dataset == "digits":
        from ..data.labelled import digits_dataset
        from ..evaluation.learning import PROBE_SPLIT_SEED, PROBE_TEST_FRACTION

        # The learning report's training split: its test images are never trained on.
        dataset = digits_dataset("train", test_fraction=PROBE_TEST_FRACTION, seed=PROBE_SPLIT_SEED)
    else:
        dataset = bundled_photo_dataset()
    column = data_args.image_column_name
    if dataset.column_names is not None and column not in dataset.column_names:
        raise ValueError(f"Column {column!r} not in the dataset; columns are {dataset.column_names}")
    # Decode ourselves, so one corrupt file is skipped and counted instead of crashing the run.
    dataset = dataset.cast_column(column, datasets.Image(decode=False))
    if data_args.max_train_samples is not None:
        dataset = dataset.take(data_args.max_train_samples)
    return dataset


def describe_vit(config) -> str:
    return f"{config.hidden_size} wide, {config.num_hidden_layers} blocks, patch {config.patch_size}"


def write_backbone(
    recipe: PretrainingRecipe, output_dir: Path, trainer, data_args, image_size: int, report: LearningReport | None
) -> tuple[Path, str | None]:
    """Export the backbone (e.g. CAPI's EMA teacher) as a standalone model with the image processor of the training
    resolution `image_size`, its remote-code bundle and hf_mim's model card (`hf_mim.hub.model_cards.training_card`).
    With a learning `report`, the same backbone is probed (no second load) and its table goes into the card too.
    Returns the folder and the report's table."""
    from ..hub.model_cards import resolve_base_model, training_card

    with without_zero3_init():  # rank 0 alone re-loads the saved model: it must not enter a ZeRO-3 collective
        full = recipe.model_class.from_pretrained(output_dir)
    backbone = recipe.backbone(full)
    backbone_dir = output_dir / "backbone"
    image_processor_at(recipe.image_processor_class, image_size).save_pretrained(backbone_dir)
    backbone.save_pretrained(backbone_dir, remote_code=True)  # after the processor: both configs get an auto_map
    # The card describes the run: it started from what the trained model was loaded from (nothing for a fresh init).
    started_from = getattr(trainer.model.config, "_name_or_path", "")
    backbone.config._name_or_path = started_from
    data = data_args.dataset_name or data_args.train_dir or f"hf_mim's bundled {data_args.bundled_dataset}"
    card = training_card(
        backbone,
        dataset=data,
        state=trainer.state,
        args=trainer.args,
        train_dataset=trainer.train_dataset,
        model_name=f"{Path(trainer.args.output_dir).name}-backbone",
        # The run's starting point (a converted release, a Hub model), not the folder the backbone was re-read from.
        base_model=resolve_base_model(started_from or None)[0],
    )
    card.text += (
        f"\n## This folder\n\n{recipe.backbone_description} of a run of "
        f"`examples/pytorch/pretraining/run_{recipe.name}.py`: {(recipe.describe or describe_vit)(backbone.config)}, "
        f"trained at {image_size} px. The full pretraining model (resumable with `AutoModelForPreTraining`) is the "
        "parent folder.\n"
    )
    table = None
    if report is not None:
        table = report.finish(backbone, output_dir, backbone_dir)
        card.text += f"\n## Learning report\n\n```\n{table}\n```\n"  # the evidence travels with the model
    card.save(backbone_dir / "README.md")
    return backbone_dir, table


def recipe_image_transform(recipe: PretrainingRecipe, config, data_args, image_size: int, extra_args=()) -> Callable:
    """The per-image training transform of `recipe`: its own factory (VICRegL's multi-crop, CAE's two views), else
    one random-resized crop (scale from `--crop_scale_min` or the recipe's) with the recipe's flip and interpolation."""
    if recipe.transform is not None:
        return recipe.transform(config, data_args, image_size, *extra_args)
    crop_scale = (data_args.crop_scale_min or recipe.crop_scale_min, 1.0)
    return pretraining_transform(image_size, crop_scale, recipe.hflip, recipe.interpolation)


def run(recipe: PretrainingRecipe, argv: list[str] | None = None) -> int:
    parser = HfArgumentParser(
        (ModelArguments, DataTrainingArguments, *recipe.extra_argument_classes, recipe.arguments_class)
    )
    add_presets_help(parser, recipe.config_presets, recipe.default_preset)
    argv = sys.argv[1:] if argv is None else argv
    # Loader defaults of the pretraining scripts (README "Pretrain"): worker processes scale with the cores
    # (`default_dataloader_num_workers`); given options, in a JSON file or on the command line, win.
    loader_defaults = {"dataloader_num_workers": default_dataloader_num_workers()}
    if len(argv) == 1 and argv[0].endswith(".json"):
        settings = json.loads(Path(argv[0]).read_text())
        given = set(settings)
        model_args, data_args, *extra_args, training_args = parser.parse_dict({**loader_defaults, **settings})
    else:
        given = options_given(parser, argv, DERIVED_OPTIONS)
        defaults = [f"--{name}={value}" for name, value in loader_defaults.items()]
        if not any(a == "--output_dir" or a.startswith("--output_dir=") for a in argv):
            argv = [*argv, "--output_dir", f"outputs/{recipe.name}-pretraining"]
        model_args, data_args, *extra_args, training_args = parser.parse_args_into_dataclasses(args=[*defaults, *argv])
        if not data_args.has_data and not model_args.config_name and not model_args.model_name_or_path:
            # The embedded default runs the recipe's CPU recipe (`recipe.cpu_recipe`); the command line still wins, as
            # argparse keeps the last occurrence of an option.
            cpu_recipe = list(recipe.cpu_recipe)
            model_args, data_args, *extra_args, training_args = parser.parse_args_into_dataclasses(
                args=[*defaults, *cpu_recipe, *argv]
            )
    if model_args.config_name:
        # A mistyped preset fails here, before any work or network attempt, with the presets and the closest one.
        model_args.config_name = resolve_config_name_or_exit(
            parser, model_args.config_name, recipe.config_presets, f"run_{recipe.name}.py"
        )
    if "dataloader_persistent_workers" not in given:
        # Workers live for the whole run: no new processes, and no pipeline refilled from cold, at each epoch. Under
        # position seeding the epoch reaches them through shared memory (PositionalDataset); the global RNG keeps
        # the originals' per-epoch workers, whose fresh seeds make a resume at an epoch end exact.
        training_args.dataloader_persistent_workers = (
            training_args.dataloader_num_workers > 0 and training_args.augmentation_rng == "position"
        )
    training_args.remove_unused_columns = False  # the collator builds the model inputs itself
    if not data_args.has_data and training_args.max_steps <= 0:
        training_args.max_steps = DEFAULT_DEMO_STEPS
    if "logging_steps" not in given and training_args.max_steps > 0:
        # transformers logs every 500 steps: a shorter run (the CPU recipes' 600-1200 steps, a 40-step try) would show
        # one loss or none. About 20 lines a run, never rarer than transformers' default; a given value wins.
        training_args.logging_steps = logging_steps_for(training_args.max_steps)
    if data_args.streaming and training_args.max_steps <= 0:
        raise ValueError("--streaming needs --max_steps (a streamed dataset has no length).")

    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", level=logging.INFO)
    transformers.utils.logging.set_verbosity(training_args.get_process_log_level())
    logger.info("%s pretraining; world size %d", recipe.name, training_args.world_size)

    last_checkpoint = training_args.resume_from_checkpoint
    if last_checkpoint is None and Path(training_args.output_dir).is_dir():
        try:
            last_checkpoint = checkpoint_to_resume(training_args.output_dir, training_args)
        except RunFolderError as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        if last_checkpoint:
            last_checkpoint = str(last_checkpoint)
            logger.info("Resuming from %s", last_checkpoint)

    # Seed before anything random: the initial weights (and any head a checkpoint lacks) come from torch's global RNG.
    # The Trainer re-seeds with the same seed, then derives the data order (its sampler: --data_seed, else --seed),
    # the DataLoader workers' seeds (crops and masks run there) and the main process's crops, masks and drop-path.
    set_seed(training_args.seed)
    config = build_config(recipe, model_args)
    if recipe.configure is not None:
        config = recipe.configure(config, *extra_args)
    image_size = data_args.image_size or config.image_size
    if model_args.model_name_or_path:
        model = recipe.model_class.from_pretrained(model_args.model_name_or_path, config=config)
    else:
        model = recipe.model_class(config)
    if recipe.attach is not None:
        with without_zero3_init():  # what a recipe attaches (a frozen target network) stays whole on every rank
            recipe.attach(model, *extra_args)

    report = None
    if data_args.learning_report if data_args.learning_report is not None else not data_args.has_data:
        if training_args.deepspeed:
            logger.warning("No learning report under DeepSpeed (ZeRO-3 partitions the weights it would probe).")
        elif training_args.process_index == 0:
            report = LearningReport(recipe.image_processor_class, image_size)
            report.start(recipe.backbone(model))

    dataset = load_training_data(data_args)
    image_transform = recipe_image_transform(recipe, config, data_args, image_size, extra_args)
    transform = SafeImageTransform(image_transform, data_args.image_column_name)
    if isinstance(dataset, datasets.IterableDataset):
        # A stream cannot be refilled by index: unreadable rows are dropped (batches stay full) and named on the row
        # that follows them.
        dataset = dataset.map(
            drop_unreadable_rows(transform), batched=True, remove_columns=list(dataset.column_names or [])
        )
        # Each rank reads its own shard: accelerate's default for iterable data (rank 0 reads and concatenates
        # every rank's batch) cannot concatenate the skipped-file names the collator reports.
        training_args.accelerator_config.dispatch_batches = False
    else:
        dataset = dataset.with_transform(transform)

    try:
        with pushing_to(hub_repo_of(training_args)):  # with --push_to_hub the Trainer creates its repo here
            trainer = recipe.trainer_class(
                model=model,
                args=training_args,
                train_dataset=dataset,
                data_collator=recipe.collator(model),
                processing_class=image_processor_at(recipe.image_processor_class, image_size),  # saved in every folder
            )
    except HubPushError as error:  # before any training: offline, not logged in, no network
        print(f"error: {error}", file=sys.stderr)
        return 1
    try:
        train_result = trainer.train(resume_from_checkpoint=last_checkpoint)
    except (NonFiniteLossError, CheckpointWriteError) as error:
        logger.error(str(error))
        print(f"error: {error}", file=sys.stderr)
        return 1
    failed_push = None
    try:
        with pushing_to(hub_repo_of(training_args)):
            trainer.save_model()  # with --push_to_hub also the upload, after the folder is saved
    except HubPushError as error:  # the run's folder is complete; the backbone and metrics are still written
        failed_push = error
    trainer.log_metrics("train", train_result.metrics)
    trainer.save_metrics("train", train_result.metrics)
    trainer.save_state()
    skipped = trainer.all_skipped_files()  # collective: every rank takes part
    output_dir = Path(training_args.output_dir)
    if trainer.is_world_process_zero():
        # The full pretraining model loads without hf_mim too (AutoModelForPreTraining / AutoModel with
        # trust_remote_code=True), as backbone/ does; after the Trainer saved the processor, which gets its auto_map.
        export_remote_code(output_dir)
        backbone_dir, table = write_backbone(recipe, output_dir, trainer, data_args, image_size, report)
        if len(skipped):
            print(f"{skipped.summary()} (during training)")
        print(f"Pretraining model saved to {output_dir.resolve()}")
        print(f"Backbone ({recipe.backbone_description}, AutoModel-loadable) saved to {backbone_dir.resolve()}")
        if table is not None:
            print(table)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    if failed_push is not None:
        print(f"error: {failed_push}", file=sys.stderr)
        return 1
    return 0
