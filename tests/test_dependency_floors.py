"""Security floors of the declared dependencies (pyproject.toml), and the installed stack inside the declared ranges.

torch >= 2.10: CVE-2026-24747, memory corruption in the weights-only unpickler of older torch; every converter reads
checkpoints with `torch.load(..., weights_only=True)`. transformers >= 5.3: CVE-2026-4372, a `config.json` field could
trigger remote code without `trust_remote_code`.
"""

import tomllib
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"
SECURITY_FLOORS = {"torch": "2.10", "torchvision": "0.25", "transformers": "5.3"}


def _requirements() -> dict[str, Requirement]:
    declared = tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))["project"]["dependencies"]
    return {req.name.lower(): req for req in map(Requirement, declared)}


def _lowest_allowed(req: Requirement) -> Version:
    floors = [Version(spec.version) for spec in req.specifier if spec.operator in (">=", "==", "~=")]
    assert floors, f"{req} declares no lower bound"
    return max(floors)


@pytest.mark.parametrize("name", sorted(SECURITY_FLOORS))
def test_declared_floor_is_at_least_the_security_floor(name):
    req = _requirements()[name]
    floor = Version(SECURITY_FLOORS[name])
    assert _lowest_allowed(req) >= floor, f"{req}: the floor must be >= {floor}"
    # Every version the specifier admits is at or above the floor: one just below it is refused.
    below = Version(f"{floor.major}.{floor.minor - 1}.99") if floor.minor else Version(f"{floor.major - 1}.99")
    assert not req.specifier.contains(below, prereleases=True), f"{req} admits {below}"


def test_torch_keeps_its_upper_cap():
    assert not _requirements()["torch"].specifier.contains("2.15.0")


def test_installed_versions_satisfy_the_declared_ranges():
    checked = []
    for name, req in _requirements().items():
        try:
            installed = version(name)
        except PackageNotFoundError:
            continue
        checked.append(name)
        # Local build tags (2.14.1+cu130) compare as their public version.
        assert req.specifier.contains(Version(installed).public, prereleases=True), f"{name} {installed} vs {req}"
    assert {"torch", "torchvision", "transformers"} <= set(checked)
