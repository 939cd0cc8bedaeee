"""The learning-parity benchmark's tables, computed from a cache of results (no training): the Welch interval of the
difference of means and the change of each side over its own initialisation, paired per seed (`--init_dir`)."""

import json
import math
import sys

import pytest

from .helpers import REPO, load_script


@pytest.fixture(scope="module")
def parity():
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        yield load_script("benchmarks/benchmark_learning_parity.py")
    finally:
        sys.path.remove(str(REPO / "benchmarks"))


def write_result(folder, method, variant, seed, pooled, mean_patch):
    metrics = {
        "pooled": {"knn_top1": pooled / 100, "effective_rank": 10.0 + seed},
        "mean_patch": {"knn_top1": mean_patch / 100, "effective_rank": 8.0 + seed},
    }
    path = folder / "results" / f"{method}_{variant}_seed{seed}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"metrics": metrics, "settings": {"steps": 500}, "total_wall_s": 60.0}))


def test_welch_interval_matches_the_textbook_formula(parity):
    a, b = [1.0, 2.0, 3.0, 4.0], [2.0, 4.0, 6.0]
    w = parity.welch_interval(a, b)
    va, vb = (1.6666666666666667 / 4), (4.0 / 3)
    df = (va + vb) ** 2 / (va**2 / 3 + vb**2 / 2)
    assert w["diff"] == pytest.approx(2.5 - 4.0)
    assert w["df"] == pytest.approx(df)
    assert w["high"] - w["diff"] == pytest.approx(w["t"] * math.sqrt(va + vb))
    assert 2.0 < w["t"] < 3.0  # the 95 % quantile of t with about 2.8 degrees of freedom (2.35 for df 3, 2.92 for 2)


def test_change_over_initialisation_is_paired_per_seed(parity, tmp_path, capsys):
    runs, inits = tmp_path / "runs", tmp_path / "inits"
    # hf_mim: random init and trained, per seed; original: trained, and its init in another cache
    for seed, (random_init, default, original_init, original) in enumerate(
        [(20, 25, 30, 36), (30, 33, 20, 24), (25, 31, 28, 33)]
    ):
        write_result(runs, "capi", "random", seed, random_init, random_init)
        write_result(runs, "capi", "default", seed, default, default - 1)
        write_result(runs, "capi", "original", seed, original, original)
        write_result(inits, "capi", "original", seed, original_init, original_init)
    parity.main(["--methods", "capi", "--seeds", "0,1,2", "--variants", "default,original", "--output_dir", str(runs),
                 "--init_dir", str(inits), "--report_only"])  # fmt: skip
    text = capsys.readouterr().out
    # pooled: hf_mim changes +5 +3 +6, the original +6 +4 +5 (each against its own seed's init)
    assert "| default | 3 | 4.7 ± 1.5 | +5.0 +3.0 +6.0 |" in text
    assert "| original | 3 | 5.0 ± 1.0 | +6.0 +4.0 +5.0 |" in text
    assert "hf_mim − original change: -0.3 [" in text
    # mean patch: hf_mim one point lower after training
    assert "| default | 3 | 3.7 ± 1.5 | +4.0 +2.0 +5.0 |" in text
    # unpaired difference of the trained means is in the table too: (25+33+31)/3 - (36+24+33)/3 = -1.3
    assert "| default | -1.3 | [" in text


def test_in_process_originals_are_planned_seed_by_seed(parity, tmp_path, capsys):
    """CAE v1 / v2 and VICRegL need no tool (their originals run in-process), only the tree; every random init comes
    first, then seed by seed every method; original_choices, which sets nothing back for them, is left out."""
    cae, vicregl = tmp_path / "cae", tmp_path / "vicregl"
    cae.mkdir(), vicregl.mkdir()
    parity.main(["--methods", "cae,cae_v2,vicregl", "--seeds", "0,1", "--output_dir", str(tmp_path / "out"),
                 "--original_cae_src", str(cae), "--original_vicregl_src", str(vicregl), "--report_only"])  # fmt: skip
    args = parity.argparse.Namespace(methods=["cae_v2", "vicregl"], seeds=[0, 1], variants=["default",
                                     "original_choices", "original"], original_cae_src=cae, original_vicregl_src=None,
                                     tools_dir=tmp_path / "no_tools")  # fmt: skip
    todo, notes = parity.plan(args)
    assert todo == [("cae_v2", "random", 0), ("cae_v2", "random", 1), ("vicregl", "random", 0),
                    ("vicregl", "random", 1), ("cae_v2", "default", 0), ("cae_v2", "original", 0),
                    ("vicregl", "default", 0), ("cae_v2", "default", 1), ("cae_v2", "original", 1),
                    ("vicregl", "default", 1)]  # fmt: skip
    assert any("vicregl: no --original_vicregl_src given" in note for note in notes)
    assert capsys.readouterr().out.startswith("no results")


def test_hf_side_of_cae_v2_and_vicregl(parity, tmp_path):
    """hf_mim's side: run_cae.py --cae_version 2 at the CAE recipe, and run_vicregl.py at vicregl-tiny-resnet with the
    stem the original ResNet can build - the config the random-init variant and the converted original use."""
    from hf_mim.presets import CONFIG_PRESETS

    args = parity.argparse.Namespace(steps_for={"cae_v2": 30, "vicregl": 20}, batch_size=64)
    cae_v2 = parity.hf_command(args, "cae_v2", "default", 3, tmp_path, tmp_path / "out")
    assert cae_v2[1].endswith("run_cae.py") and cae_v2[cae_v2.index("--cae_version") + 1] == "2"
    assert cae_v2[cae_v2.index("--learning_rate") + 1] == "0.0003" and "--config_overrides" not in cae_v2
    vicregl = parity.hf_command(args, "vicregl", "default", 3, tmp_path, tmp_path / "out")
    assert vicregl[1].endswith("run_vicregl.py") and vicregl[vicregl.index("--max_steps") + 1] == "20"
    name, overrides = vicregl[vicregl.index("--config_name") + 1], vicregl[vicregl.index("--config_overrides") + 1]
    config = CONFIG_PRESETS[name]()
    config.update_from_string(overrides)
    assert config.to_dict() == parity.originals.vicregl_config().to_dict()
    assert config.hidden_sizes == [4 * config.embedding_size * 2**i for i in range(4)]  # the original ResNet's rule


def test_original_loss_is_averaged_over_the_steps_of_the_last_logged_hf_loss(parity):
    """The Trainer logs the mean loss since its previous log at every multiple of --logging_steps: at 250 steps and
    logging every 100, its last logged loss covers steps 101-200, and so must the original's."""
    losses = [float(step) for step in range(1, 251)]
    assert parity.originals.last_logged_window(losses, 100) == 150.5  # mean of 101..200
    assert parity.originals.last_logged_window(losses[:200], 100) == 150.5
    assert parity.originals.last_logged_window(losses[:3], 100) == 2.0  # shorter than a window: every step
