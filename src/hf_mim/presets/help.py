"""The presets table every script's --help ends with: kind, architecture, exact parameter counts, default image size
and the measured CPU seconds per training step (`presets.measured`, written by `benchmarks/benchmark_presets.py`)."""

import argparse
import textwrap

from . import PRESET_ALIASES, PRESET_DESCRIPTIONS

COLUMNS = ("preset", "kind", "architecture", "backbone", "pretraining", "image", "CPU s/step (batch)")


def _millions(count: int) -> str:
    return f"{count / 1e6:.2f}M" if count < 10_000_000 else f"{count / 1e6:.1f}M"


def _seconds(size) -> str:
    if size.seconds_per_step is None:
        return "not measured"
    return f"{size.seconds_per_step:.3g} ({size.batch_size})"


def presets_table(names, default: str | None = None) -> str:
    """The presets `names` as a text table (the default marked with *), with the measuring conditions and former
    names below it."""
    # Read when a table is drawn, not on import: benchmarks/benchmark_presets.py, which writes it, imports the scripts.
    from .measured import MEASURED_ON, PRESET_SIZES

    rows = []
    for name in names:
        kind, architecture = PRESET_DESCRIPTIONS[name]
        size = PRESET_SIZES[name]
        rows.append(
            (
                f"{name}{' *' if name == default else ''}",
                kind,
                architecture,
                _millions(size.backbone_parameters),
                _millions(size.pretraining_parameters),
                f"{size.image_size} px",
                _seconds(size),
            )
        )
    widths = [max(len(row[i]) for row in [COLUMNS, *rows]) for i in range(len(COLUMNS))]
    lines = [
        "  " + "  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in [COLUMNS, *rows]
    ]
    notes = [
        "kind: paper = a paper's architecture; reduced = same design, smaller, never released; demo = a toy for CPU "
        "demos and tests.",
        "backbone / pretraining: exact parameter counts of <Method>Model / <Method>ForPreTraining (student, EMA "
        "teacher, heads; not CAE's external DALL-E tokenizer / CLIP teacher).",
        f"CPU s/step: CPU seconds of one fp32 training step (forward, backward, AdamW, EMA teacher update) at the "
        f"default image size on one thread (the wall time of an idle core), {MEASURED_ON['machine']}, "
        f"{MEASURED_ON['date']} (benchmarks/benchmark_presets.py); the batch size in brackets.",
    ]
    if any(name.startswith("cae-") for name in names):
        notes.append("CAE: against a small random stand-in target (no DALL-E tokenizer / CLIP teacher forward).")
    if any(name.startswith("vicregl-") for name in names):
        notes.append(
            "VICRegL: each image gives 2 global crops (+ 6 local ones of 96 px for a ConvNeXt: about 3x the pixels "
            "of one view); batch 2 at least (BatchNorm in the projectors)."
        )
    if default:
        notes.append("* the default when no --config_name is given.")
    former = [f"{old} -> {new}" for old, new in PRESET_ALIASES.items() if new in names]
    if former:
        notes.append(f"Former names (still accepted, with a warning): {', '.join(former)}.")
    notes.append("--config_name also takes a config folder or a Hub id (owner/name).")
    notes = [textwrap.fill(note, width=100, subsequent_indent="  ") for note in notes]
    return "\n".join(["Presets (--config_name):", *lines, "", *notes])


class PresetsHelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Shows the defaults of the options (HfArgumentParser's formatter) and keeps the epilog's table as written."""


def add_presets_help(parser: argparse.ArgumentParser, names, default: str | None = None) -> None:
    """End `parser`'s --help with the table of the presets `names`."""
    parser.epilog = presets_table(names, default)
    parser.formatter_class = PresetsHelpFormatter
