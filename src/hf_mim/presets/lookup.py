"""What a `--config_name` names: a preset, a former preset name (accepted with a warning), or a config folder / Hub
id for `from_pretrained`. A name that is none of these fails here, before any network attempt, with the script's
presets and the closest one: a typo such as `capi-base` used to become a Hub lookup that ended, offline or behind a
firewall, in "OSError: We couldn't connect to 'https://huggingface.co'"."""

import argparse
import difflib
import os
import warnings

from huggingface_hub import constants as hub_constants

from . import CONFIG_PRESETS, PRESET_ALIASES, method_of


class UnknownPresetError(ValueError):
    """`--config_name` is neither a preset of the script nor a config folder / Hub id."""


def _hub_offline() -> bool:
    return hub_constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "0").upper() in {"1", "ON", "YES", "TRUE"}


def _looks_like_preset(name: str) -> bool:
    known = [*CONFIG_PRESETS, *PRESET_ALIASES]
    return name.split("-")[0] in {method_of(preset) for preset in known} or bool(
        difflib.get_close_matches(name, known, n=1, cutoff=0.75)
    )


def unknown_preset_message(name: str, presets, script: str | None = None) -> str:
    """The error for `name`: the presets of the script, the closest of them, and where `name` would have worked."""
    presets = list(presets)
    where = f" of {script}" if script else ""
    lines = [f"--config_name {name!r} is not a preset{where}, a config folder or a Hub id (owner/name)."]
    close = difflib.get_close_matches(name, presets + [a for a, p in PRESET_ALIASES.items() if p in presets], n=1)
    if close:
        lines.append(f"Did you mean {PRESET_ALIASES.get(close[0], close[0])!r}?")
    elsewhere = PRESET_ALIASES.get(name, name)
    if elsewhere in CONFIG_PRESETS and elsewhere not in presets:
        lines.append(f"{elsewhere!r} is a preset of run_{method_of(elsewhere)}.py.")
    lines.append(f"Presets: {', '.join(presets)} (sizes in --help).")
    return "\n".join(lines)


def resolve_config_name(name: str, presets, script: str | None = None, external: bool = True) -> str:
    """The preset `name` stands for, or `name` itself when it is for `from_pretrained`.

    - a preset in `presets`: returned as is;
    - a former name of one (`PRESET_ALIASES`): its current name, with a FutureWarning;
    - a name with a "/" or an existing path (a config folder, a Hub id such as "facebook/..."): returned as is when
      `external`, for `AutoConfig.from_pretrained`;
    - anything else raises UnknownPresetError at once when it cannot be a Hub model: offline, or when it looks like a
      preset (starts with a method's name, or is close to a preset). Other single-word names (legacy Hub ids such as
      "gpt2") still go to the Hub, unless `external` is False (a script that only builds presets)."""
    if name in presets:
        return name
    current = PRESET_ALIASES.get(name)
    if current in presets:
        warnings.warn(
            f"--config_name {name!r} is a former name of the preset {current!r}; use {current!r}.",
            FutureWarning,
            stacklevel=2,
        )
        return current
    if external and ("/" in name or os.sep in name or os.path.exists(name)):
        return name
    if not external or _hub_offline() or _looks_like_preset(name):
        raise UnknownPresetError(unknown_preset_message(name, presets, script))
    return name


def resolve_config_name_or_exit(
    parser: argparse.ArgumentParser, name: str, presets, script: str | None = None, external: bool = True
) -> str:
    """`resolve_config_name` for a command line: an unknown name ends the program (status 2) with the message alone,
    not after argparse's usage (HfArgumentParser's, with TrainingArguments, runs to a hundred lines)."""
    script = script or parser.prog
    try:
        return resolve_config_name(name, presets, script, external)
    except UnknownPresetError as error:
        parser.exit(2, f"{script}: error: {error}\n")
