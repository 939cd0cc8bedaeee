"""Model cards for hf_mim folders, built with `huggingface_hub` (`ModelCard`, `ModelCardData`, `EvalResult`): one
layout for converted releases (`conversion_card`, used by every converter, `models/<m>/convert_<m>.py`) and for models
trained with hf_mim (`training_card`, written by `MimPretrainingTrainer.create_model_card`, which `Trainer.push_to_hub`
calls, so `run_<method>.py --push_to_hub` uploads it).

A card holds: metadata (license, `library_name`, `pipeline_tag`, tags, datasets, `base_model` where one exists, the
authors' reported numbers as `model-index` / `eval_results`), a facts table, usage for both loading paths (with hf_mim
installed: `import hf_mim` + the Auto classes; without it: `trust_remote_code=True` on the bundled code), what was
measured about the conversion, the license and the paper's BibTeX.

Nothing here names a method: what only a method knows (its usage snippet, the paper a card without a release cites)
is a `CardText` beside its model (`models/<m>/card_<m>.py`), registered for its config's `model_type` by
`auto_registration.register_model(..., card=...)` on `import hf_mim`; the method's facts (license, tags, parity) come
from the release table (`hub.releases.METHODS`).
"""

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from .._version import __version__
from .install import INSTALL_SENTENCE
from .releases import METHODS, Method, Metric, Paper, Release, release_named, releases_for

LIBRARY_TAG = "hf_mim"
UNVERIFIED_MARK = "†"
_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


# ---------------------------------------------------------------------------------------------------- card texts
@dataclass(frozen=True)
class CardText:
    """What a card says that only its method knows, kept beside the model (`models/<m>/card_<m>.py`) and registered
    for the config's `model_type` by `auto_registration.register_model(..., card=...)`. Everything else on a card
    (layout, metadata, facts, license, citation) is built here from the release table (`METHODS[method]`)."""

    method: str  # key of hub.releases.METHODS
    usage: Callable[[str, Any, bool], str]  # (repo_id, config or None, remote) -> the ```python block that loads it
    # (config or None) -> the paper a card cites when no release names one; default: the method's first release's
    paper: Callable[[Any], Paper | None] | None = None

    def paper_for(self, config=None) -> Paper | None:
        if self.paper is not None:
            return self.paper(config)
        releases = releases_for(self.method)
        return releases[0].paper if releases else None


CARD_TEXTS: dict[str, CardText] = {}  # model_type -> its card text; filled by `auto_registration.register_model`


def register_card_text(model_type: str, card: CardText) -> None:
    if card.method not in METHODS:
        raise ValueError(f"Unknown method {card.method!r}; known: {', '.join(METHODS)}.")
    CARD_TEXTS[model_type] = card


def card_text(method: str) -> CardText:
    """The registered card text of `method` (a key of METHODS)."""
    for card in CARD_TEXTS.values():
        if card.method == method:
            return card
    raise ValueError(f"No usage snippet for {method!r}.")


def is_repo_id(name: str | None) -> bool:
    """`namespace/name` as the Hub spells repo ids (a local path that exists is not one)."""
    return bool(name) and bool(_REPO_ID.match(str(name))) and not Path(str(name)).exists()


def eval_results(metrics: Iterable[Metric], include_unverified: bool = False) -> list[EvalResult]:
    """The metrics as `huggingface_hub.EvalResult`s (the Hub's `verified` flag is for its own evaluation service and
    is never set); numbers marked unverified are left out unless `include_unverified`."""
    return [
        EvalResult(
            task_type=m.task_type,
            task_name=m.task_name,
            dataset_type=m.dataset_type,
            dataset_name=m.dataset_name,
            metric_type=m.metric_type,
            metric_value=m.value,
            metric_name=m.name,
            source_name=m.source,
            source_url=m.source_url,
        )
        for m in metrics
        if m.verified or include_unverified
    ]


def card_data(
    method: Method,
    *,
    repo_id: str,
    release: Release | None = None,
    datasets: Sequence[str] = (),
    base_model: str | None = None,
    license: str | None = None,
    license_name: str | None = None,
    license_link: str | None = None,
    extra_tags: Sequence[str] = (),
    include_unverified_metrics: bool = False,
) -> ModelCardData:
    license = license or method.license
    if license == method.license and license_name is None and license_link is None:
        license_name, license_link = method.license_name, method.license_url
    if license != "other":
        license_name = license_link = None
    results = eval_results(release.metrics, include_unverified_metrics) if release is not None else []
    tags = list(dict.fromkeys([LIBRARY_TAG, *method.tags, *extra_tags]))
    return ModelCardData(
        license=license,
        license_name=license_name,
        license_link=license_link,
        library_name="transformers",
        pipeline_tag=method.pipeline_tag,
        tags=tags,
        datasets=list(datasets) or None,
        base_model=base_model,
        model_name=repo_id if results else None,
        eval_results=results or None,
    )


# ---------------------------------------------------------------------------------------------------- usage
def config_value(config, name: str, default):
    """`config.name`, or `default` (a placeholder for the snippet) when there is no config."""
    return getattr(config, name, default) if config is not None else default


def image_feature_usage(repo_id: str, output_lines: Sequence[str], remote: bool) -> str:
    """The snippet of an image feature extractor: image processor + `AutoModel`, then `output_lines` (what to do with
    `outputs`), loaded with hf_mim installed or, with `remote`, as remote code."""
    lines = "\n".join(output_lines)
    if not remote:
        return f"""```python
import hf_mim  # registers hf_mim's models with the Auto classes
from transformers import AutoImageProcessor, AutoModel

processor = AutoImageProcessor.from_pretrained("{repo_id}")
model = AutoModel.from_pretrained("{repo_id}").eval()
outputs = model(**processor(images=image, return_tensors="pt"))  # image: a PIL image
{lines}
```"""
    return f"""```python
from transformers import AutoImageProcessor, AutoModel

processor = AutoImageProcessor.from_pretrained("{repo_id}", trust_remote_code=True)
model = AutoModel.from_pretrained("{repo_id}", trust_remote_code=True).eval()
outputs = model(**processor(images=image, return_tensors="pt"))
{lines}
```"""


def usage_section(method: str, repo_id: str, config=None, remote_code: bool = True, pretraining: bool = False) -> str:
    """'## Usage' with both loading paths: hf_mim installed, and plain transformers with `trust_remote_code=True`
    (only if the folder carries the remote-code bundle); the snippets are the method's (`CardText.usage`)."""
    usage = card_text(method).usage
    native = usage(repo_id, config, False)
    parts = ["## Usage", "", "### With hf_mim installed", "", INSTALL_SENTENCE, "", native, ""]
    if pretraining:
        parts += [
            "`AutoModelForPreTraining.from_pretrained(...)` loads the full pretraining model (to continue "
            "pretraining); `AutoModel` loads the backbone from the same folder.",
            "",
        ]
    parts += ["### Without hf_mim (plain transformers, remote code)", ""]
    if remote_code:
        parts += [
            "The folder carries the model's code (generated from hf_mim's source by `hf_mim.hub.remote_code`), so "
            "transformers loads it with `trust_remote_code=True`; read the `.py` files before trusting them.",
            "",
            usage(repo_id, config, True),
        ]
    else:
        parts += ["This folder was saved without the remote-code bundle: install hf_mim to load it."]
    return "\n".join(parts)


# ---------------------------------------------------------------------------------------------------- sections
def _table(rows: Sequence[tuple[str, str]]) -> str:
    lines = ["| | |", "|---|---|"]
    lines += [f"| {key} | {value} |" for key, value in rows if value]
    return "\n".join(lines)


def results_section(release: Release, include_unverified_metrics: bool = False) -> str:
    if not release.metrics:
        return ""
    lines = [
        "## Results reported by the authors",
        "",
        "| protocol | dataset | metric | value | source |",
        "|---|---|---|---|---|",
    ]
    unverified = False
    for m in release.metrics:
        mark = "" if m.verified else f" {UNVERIFIED_MARK}"
        unverified |= not m.verified
        lines.append(f"| {m.task_name} | {m.dataset_name} | {m.name} | {m.value}{mark} | {m.source} |")
    lines += ["", "These are the original authors' numbers for the original weights; hf_mim did not re-run them."]
    if unverified:
        where = "included in" if include_unverified_metrics else "left out of"
        lines.append(
            f"{UNVERIFIED_MARK} Recalled from the paper in hf_mim's notes on the release and not verified against it; "
            f"{where} the `model-index` metadata."
        )
    return "\n".join(lines)


def license_section(method: Method, license: str, derived_from: str | None) -> str:
    """The license paragraph: for weights derived from a release (a conversion, or a run continuing from one) the
    original project's terms and link; for a run trained from scratch the license chosen for it."""
    lines = ["## License", ""]
    if derived_from is not None:
        lines.append(f"These weights are derived from {derived_from} and keep its license. {method.license_note}")
        lines += ["", f"See {method.license_url}"]
    elif license == method.license:
        lines.append(
            f"`{license}`: the license hf_mim's example scripts give {method.display_name} models, the original "
            f"project's ({method.license_url}). {method.license_note}"
        )
    else:
        lines.append(f"`{license}`.")
    return "\n".join(lines)


def citation_section(bibtex: str) -> str:
    return "\n".join(["## Citation", "", "```bibtex", bibtex.strip(), "```"])


def _render(data: ModelCardData, sections: Sequence[str]) -> ModelCard:
    body = "\n\n".join(section.strip() for section in sections if section and section.strip())
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n{body}\n")


def _method_link(method: Method, paper) -> str:
    return f"{method.display_name}: [{paper.title}]({paper.url}) ({paper.authors}, {paper.venue})"


# ---------------------------------------------------------------------------------------------------- conversions
def conversion_card(
    method: str,
    *,
    config,
    model_name: str,
    repo_id: str | None = None,
    release: Release | None = None,
    source_file: str | None = None,
    summary: str = "",
    contents: str = "",
    checks: Sequence[str] = (),
    notes: Sequence[str] = (),
    remote_code: bool = True,
    pretraining: bool = False,
    include_unverified_metrics: bool = False,
    paper=None,
    identification: str | None = None,
    extra_tags: Sequence[str] = (),
) -> ModelCard:
    """The card of a converted checkpoint. `release` (from `hf_mim.hub.releases`) adds the release's facts, datasets
    and reported numbers; without it (a checkpoint that is not a known release) those are left out. `checks` are
    what was measured while converting this file (from the converter's report); `summary` / `contents` / `notes`
    are the converter's sentences about the architecture, what the folder holds and the method's quirks;
    `identification` says why no release was identified (e.g. a named release whose architecture differs)."""
    info = METHODS[method]
    repo_id = repo_id or (release.repo_id if release is not None else model_name)
    paper = paper or (release.paper if release is not None else card_text(method).paper_for(config))
    data = card_data(
        info,
        repo_id=repo_id,
        release=release,
        datasets=release.datasets if release is not None else (),
        extra_tags=extra_tags,
        include_unverified_metrics=include_unverified_metrics,
    )

    original = f"`{source_file}`" if source_file else ""
    if release is not None:
        original = (original or f"`{release.file_name}`") + " from " + ", ".join(f"<{u}>" for u in release.urls)
    facts = _table(
        [
            ("Method", _method_link(info, paper) if paper else info.display_name),
            ("Original code", info.repository),
            ("Original checkpoint", original),
            (
                "Release",
                f"`{release.name}` ({release.description})"
                if release is not None
                else (
                    f"not identified: {identification}; the release's facts and reported numbers are left out"
                    if identification and identification != "none identified"
                    else "not a known release"
                ),
            ),
            ("Pretraining data", release.pretraining_data if release is not None else "not identified"),
            ("License", f"`{data.license}`" + (f" ({info.license_url})" if data.license == info.license else "")),
            ("Converted with", f"hf_mim {__version__}, `{info.converter}`"),
        ]
    )
    parity = ["## Conversion and parity", ""]
    parity += [f"* {line}" for line in checks]
    if release is not None and release.architecture:
        fields = ", ".join(f"{k}={v}" for k, v in release.architecture.items())
        parity.append(f"* Expected architecture of `{release.name}` (hf_mim's release table): {fields}.")
    if info.parity:
        parity.append(f"* {info.parity}")
    release_notes = list(release.notes) if release is not None else []
    return _render(
        data,
        [
            f"# {model_name}",
            summary,
            facts,
            contents,
            usage_section(method, repo_id, config, remote_code=remote_code, pretraining=pretraining),
            "\n\n".join(notes),
            results_section(release, include_unverified_metrics) if release is not None else "",
            "\n".join(parity) if len(parity) > 2 else "",
            "\n\n".join(release_notes),
            license_section(info, data.license, derived_from=f"the original {info.display_name} release"),
            citation_section(paper.bibtex) if paper else "",
        ],
    )


# ---------------------------------------------------------------------------------------------------- trained models
def resolve_base_model(name_or_path: str | None) -> tuple[str | None, Release | None]:
    """The Hub repo id a run started from, and its release if it is one: a repo id as given, or, for a local folder,
    the `model-index` name its card records (hf_mim's converted releases record their repo id there)."""
    if not name_or_path:
        return None, None
    if is_repo_id(name_or_path):
        return str(name_or_path), release_named(name_or_path)
    readme = Path(str(name_or_path), "README.md")
    if readme.is_file():
        try:
            card = ModelCard.load(readme)
        except Exception:  # an unreadable card only costs the base_model field
            return None, None
        recorded = card.data.model_name or card.data.get("base_model")
        if isinstance(recorded, str) and _REPO_ID.match(recorded):
            return recorded, release_named(recorded)
    return None, None


def _dataset_description(train_dataset) -> tuple[str | None, list[str]]:
    """(text, Hub dataset ids) from a `datasets` dataset's info, where it names one."""
    info = getattr(train_dataset, "info", None)
    if info is None:
        return None, []
    name = getattr(info, "dataset_name", None) or getattr(info, "builder_name", None)
    if not name or name in {"imagefolder", "generator", "parquet", "arrow", "json", "csv"}:
        return (f"a local `{name}` dataset" if name else None), []
    config = getattr(info, "config_name", None)
    text = f"`{name}`" + (f" (config `{config}`)" if config and config != "default" else "")
    return text, []


def _final_loss(log_history: Sequence[dict]) -> float | None:
    for entry in reversed(log_history):
        if "train_loss" in entry:
            return entry["train_loss"]
    for entry in reversed(log_history):
        if "loss" in entry:
            return entry["loss"]
    return None


def training_card(
    model,
    *,
    state,
    args,
    train_dataset=None,
    model_name: str | None = None,
    repo_id: str | None = None,
    base_model: str | None = None,
    license: str | None = None,
    tags: Sequence[str] = (),
    dataset: str | Sequence[str] | None = None,
    dataset_tags: str | Sequence[str] | None = None,
    remote_code: bool = True,
) -> ModelCard:
    """The card of a model pretrained with an hf_mim Trainer: `base_model` (the converted release or Hub model the
    run started from, found from `model.config._name_or_path` unless given), license (the base model's, else the
    method's as the example scripts state it), training data, steps and final loss from the trainer state, usage."""
    config = model.config
    card = CARD_TEXTS.get(config.model_type)
    if card is None:
        raise ValueError(f"No hf_mim card layout for model_type {config.model_type!r}.")
    method = card.method
    info = METHODS[method]
    base_release = None
    if base_model is None:
        base_model, base_release = resolve_base_model(getattr(config, "_name_or_path", None))
    else:
        base_release = release_named(base_model)
    started_from = getattr(config, "_name_or_path", None) or None
    if license is None:
        license = base_release.license if base_release is not None else info.license
    datasets = [dataset_tags] if isinstance(dataset_tags, str) else list(dataset_tags or [])
    data_text, inferred = _dataset_description(train_dataset)
    if dataset is not None:
        data_text = ", ".join(f"`{d}`" for d in ([dataset] if isinstance(dataset, str) else dataset))
    datasets = datasets or inferred
    name = model_name or (repo_id.split("/")[-1] if repo_id else Path(args.output_dir).name)
    repo_id = repo_id or getattr(args, "hub_model_id", None) or name
    data = card_data(
        info,
        repo_id=repo_id,
        datasets=datasets,
        base_model=base_model,
        license=license,
        extra_tags=["pretraining", *tags],
    )

    loss = _final_loss(state.log_history)
    batch = args.per_device_train_batch_size * max(args.world_size, 1) * args.gradient_accumulation_steps
    if base_model:
        origin = f"[`{base_model}`](https://huggingface.co/{base_model})"
    elif started_from and Path(started_from).exists():
        origin = f"local weights at `{started_from}` (no Hub id recorded)"
    else:
        origin = "random initialisation"
    facts = _table(
        [
            ("Method", info.display_name + (f" ({info.repository})" if info.repository else "")),
            ("Architecture", f"`{type(model).__name__}` ({config.model_type})"),
            ("Started from", origin),
            ("Training data", data_text or "not recorded by the trainer (pass `dataset=` to `create_model_card`)"),
            ("Optimizer steps", f"{state.global_step}" + (f" ({state.epoch:.2f} epochs)" if state.epoch else "")),
            ("Final training loss", f"{loss:.4f}" if loss is not None else "not logged"),
            ("Batch size (total)", str(batch)),
            ("Peak learning rate", f"{args.learning_rate:g}"),
            ("Seed", str(args.seed)),
            ("License", f"`{license}`"),
            ("Trained with", f"hf_mim {__version__} (`{type(model).__name__}`, `MimPretrainingTrainer`)"),
        ]
    )
    paper = base_release.paper if base_release is not None else card.paper_for(config)
    summary = (
        f"{info.display_name} model pretrained with hf_mim"
        + (f", continuing from `{base_model}`." if base_model else ".")
        + " The folder holds the full pretraining model; the backbone loads with `AutoModel`."
    )
    return _render(
        data,
        [
            f"# {name}",
            summary,
            facts,
            usage_section(method, repo_id, config, remote_code=remote_code, pretraining=True),
            license_section(info, license, derived_from=f"`{base_model}`" if base_release is not None else None),
            citation_section(paper.bibtex) if paper is not None else "",
        ],
    )


__all__ = [
    "CARD_TEXTS",
    "CardText",
    "card_data",
    "card_text",
    "conversion_card",
    "config_value",
    "eval_results",
    "image_feature_usage",
    "is_repo_id",
    "register_card_text",
    "resolve_base_model",
    "training_card",
    "usage_section",
]
