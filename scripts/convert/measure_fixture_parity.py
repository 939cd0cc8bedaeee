#!/usr/bin/env python
"""Measure the converted models' parity with the original code on the tiny fixture checkpoints of `tests/fixtures`.

    python scripts/convert/measure_fixture_parity.py

Each fixture is a random-weight checkpoint in the original layout together with the outputs the original code
computed from it (float32 and float64; see each fixture's README for the commit of the original code). This script
converts every fixture with its converter, runs the converted model on the fixture's inputs and prints, per method,
the largest relative deviation `max|hf_mim - original| / max|original|` over the compared outputs, in float32 and
in float64. These are the numbers `hf_mim.hub.releases.METHODS[...].parity` quotes in the model cards; the parity tests
(`tests/test_convert_*.py`, `tests/test_modeling_{capi,ijepa}.py`) enforce the bounds 1e-5 (float32) and 1e-9
(float64) on the same outputs.
"""

import argparse
import contextlib
import io
import sys
import tempfile
from pathlib import Path

import torch
import transformers
from safetensors.torch import load_file
from transformers import AutoModel, AutoModelForPreTraining

import hf_mim  # noqa: F401  (registers the Auto classes)
from hf_mim.models.cae import convert_cae
from hf_mim.models.capi import convert_capi
from hf_mim.models.ijepa import convert_ijepa
from hf_mim.models.vicregl import convert_vicregl

HERE = Path(__file__).resolve().parent
FIXTURES = HERE.parents[1] / "tests" / "fixtures"


def relative(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return ((actual - expected).abs().max() / expected.abs().max()).item()


def quiet(function, *args, **kwargs):
    with contextlib.redirect_stdout(io.StringIO()):
        return function(*args, **kwargs)


def capi(root: Path) -> dict[str, list[float]]:
    folder = root / "capi"
    quiet(convert_capi.convert, FIXTURES / "capi" / "checkpoint.pth", folder, remote_code=False)
    inputs = load_file(FIXTURES / "capi" / "inputs.safetensors")
    result = {}
    for dtype, file in ((torch.float32, "expected.safetensors"), (torch.float64, "expected_fp64.safetensors")):
        expected = load_file(FIXTURES / "capi" / file)
        model = AutoModel.from_pretrained(folder).to(dtype).eval()
        deviations = []
        for size in ("56x56", "70x42"):
            with torch.no_grad():
                out = model(inputs[f"pixel_values_{size}"].to(dtype))
            for name, actual in (("global_repr", out.pooler_output), ("feature_map", out.feature_map)):
                deviations.append(relative(actual, expected[f"{name}_{size}"]))
        result[str(dtype)] = deviations
    return result


def ijepa(root: Path) -> dict[str, list[float]]:
    folder = root / "ijepa"
    quiet(convert_ijepa.convert, FIXTURES / "ijepa" / "checkpoint.pth.tar", folder, num_heads=4,
          remote_code=False)  # fmt: skip
    inputs = load_file(FIXTURES / "ijepa" / "inputs.safetensors")
    result = {}
    for dtype, file in ((torch.float32, "expected.safetensors"), (torch.float64, "expected_fp64.safetensors")):
        expected = load_file(FIXTURES / "ijepa" / file)
        model = AutoModelForPreTraining.from_pretrained(folder).to(dtype).eval()
        with torch.no_grad():
            encoder = model.ijepa(inputs["pixel_values"].to(dtype)).last_hidden_state
        result[str(dtype)] = [relative(encoder, expected["encoder_last_hidden_state"])]
    return result


def cae(root: Path) -> dict[str, list[float]]:
    result = {}
    for fixture, heads in (("cae_v1", 8), ("cae_v2", 4)):
        folder = root / fixture
        quiet(convert_cae.convert, FIXTURES / fixture / "checkpoint.pth", folder, num_heads=heads,
              decoder_num_heads=heads, remote_code=False)  # fmt: skip
        inputs = load_file(FIXTURES / fixture / "inputs.safetensors")
        for dtype, file in ((torch.float32, "expected.safetensors"), (torch.float64, "expected_fp64.safetensors")):
            expected = load_file(FIXTURES / fixture / file)
            model = AutoModel.from_pretrained(folder).to(dtype).eval()
            with torch.no_grad():
                hidden = model(inputs["pixel_values"].to(dtype)).last_hidden_state
            result.setdefault(str(dtype), []).append(relative(hidden, expected["last_hidden_state"]))
    return result


def vicregl(root: Path) -> dict[str, list[float]]:
    folder = root / "vicregl"
    fixture = FIXTURES / "vicregl_convnext"
    quiet(convert_vicregl.convert, fixture / "checkpoint.pth", folder, remote_code=False)
    inputs = load_file(fixture / "inputs.safetensors")
    result = {}
    for dtype, file in ((torch.float32, "expected.safetensors"), (torch.float64, "expected_fp64.safetensors")):
        expected = load_file(fixture / file)
        model = AutoModel.from_pretrained(folder).to(dtype).eval()
        deviations = []
        for size in ("64x64", "96x64"):
            with torch.no_grad():
                out = model(inputs[f"pixel_values_{size}"].to(dtype))
            deviations.append(relative(out.feature_map.flatten(1, 2), expected[f"maps_{size}"]))
            deviations.append(relative(out.pooler_output, expected[f"representation_{size}"]))
        result[str(dtype)] = deviations
    return result


def main(argv: list[str] | None = None) -> int:
    # No options, but `--help` must print the above and exit before any conversion runs.
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args(argv)
    torch.set_num_threads(1)
    transformers.utils.logging.disable_progress_bar()
    with tempfile.TemporaryDirectory() as tmp:
        for method in (capi, ijepa, cae, vicregl):
            measured = method(Path(tmp))
            text = ", ".join(f"{dtype.removeprefix('torch.')} {max(values):.1e}" for dtype, values in measured.items())
            print(f"{method.__name__}: {text}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
