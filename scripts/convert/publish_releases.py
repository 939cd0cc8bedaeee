#!/usr/bin/env python
"""Convert every released checkpoint found in a download folder into Hub folders, check them, and upload them.

    python scripts/convert/publish_releases.py --originals_dir DOWNLOADS --output_dir hub \
        [--only capi-vitl14-lvd ijepa-vith14-in1k ...] [--organization ORG] [--push [--private]] [--no_remote_code]

Every file under `--originals_dir` (searched recursively) whose name is one of the accepted file names of a release
in hf_mim's release table (`hf_mim.hub.releases`: `capi_vitl14_lvd.pth`, `IN1K-vit.h.14-300e.pth.tar`,
`cae_base_1600ep.pth`, `convnext_small_alpha0.75_fullckpt.pth`, `encoder.pkl`, ...) is converted with its method's
converter into `OUTPUT_DIR/<release name>` (replacing that folder): weights, config, image processor, the model card
(`hf_mim.hub.model_cards`: license, reported numbers, usage with and without hf_mim, measured parity, citation) and
the remote-code bundle. The converted config is then checked against the release's expected architecture; a
release that fails (conversion error or architecture mismatch, named field by field) is reported and its folder
removed, the others continue, and the exit code is 1.

Dry run by default: prints the plan (repo id, license, source file, files and sizes) and uploads nothing. With
`--push` it creates each repo (`HfApi.create_repo(exist_ok=True)`) and uploads the folder (`HfApi.upload_folder`),
in the table's organization (`hf-mim`) or `--organization`. Authenticate first (`hf auth login` or HF_TOKEN).
"""

import argparse
import json
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from huggingface_hub import HfApi, ModelCard

from hf_mim import __version__
from hf_mim.hub.push import HubPushError, pushing_to
from hf_mim.hub.releases import RELEASES, Release, architecture_mismatches, release_for_file, release_named
from hf_mim.models.cae import convert_cae, convert_dalle_tokenizer
from hf_mim.models.capi import convert_capi
from hf_mim.models.ijepa import convert_ijepa
from hf_mim.models.vicregl import convert_vicregl

# Each method's converter (its command line is the release table's `METHODS[method].converter` script).
CONVERTERS = {
    "capi": convert_capi,
    "ijepa": convert_ijepa,
    "cae": convert_cae,
    "vicregl": convert_vicregl,
    "dalle_tokenizer": convert_dalle_tokenizer,
}
CHECKPOINT_SUFFIXES = (".pth", ".pt", ".tar", ".pkl", ".bin", ".ckpt")
CORE_FILES = ("model.safetensors", "config.json", "preprocessor_config.json", "README.md")


@dataclass
class Outcome:
    """What happened to one release."""

    release: Release
    repo_id: str
    source: Path
    folder: Path
    also_found: list[Path] = field(default_factory=list)
    error: str | None = None
    report: dict = field(default_factory=dict)
    uploaded: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def find_release_files(originals_dir: Path, releases: Sequence[Release]) -> tuple[dict[str, list[Path]], list[Path]]:
    """release name -> files found for it (preferred spelling first, e.g. a VICRegL full checkpoint before its
    backbone file), and the checkpoint-like files that are no release's."""
    found: dict[str, list[Path]] = {}
    unknown = []
    for path in sorted(p for p in originals_dir.rglob("*") if p.is_file()):
        release = release_for_file(path, tuple(releases))
        if release is not None:
            found.setdefault(release.name, []).append(path)
        elif path.name.endswith(CHECKPOINT_SUFFIXES):
            unknown.append(path)
    by_name = {r.name: r for r in releases}
    for name, paths in found.items():
        paths.sort(key=lambda p: (by_name[name].files.index(p.name), str(p)))
    return found, unknown


def human_size(size: int) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} GB"


def folder_files(folder: Path) -> list[tuple[str, int]]:
    return sorted((p.relative_to(folder).as_posix(), p.stat().st_size) for p in folder.rglob("*") if p.is_file())


def describe_files(folder: Path) -> str:
    files = dict(folder_files(folder))
    parts = [f"{name} ({human_size(files.pop(name))})" for name in CORE_FILES if name in files]
    code = {name: size for name, size in files.items() if name.endswith(".py")}
    if code:
        parts.append(f"remote code: {len(code)} .py files ({human_size(sum(code.values()))})")
    parts += [f"{name} ({human_size(size)})" for name, size in files.items() if name not in code]
    return ", ".join(parts)


def convert_one(release: Release, source: Path, folder: Path, repo_id: str, remote_code: bool) -> Outcome:
    outcome = Outcome(release, repo_id, source, folder)
    if folder.exists():
        shutil.rmtree(folder)
    try:
        outcome.report = CONVERTERS[release.method].convert_release(
            source, folder, release, repo_id=repo_id, remote_code=remote_code
        )
        config = json.loads((folder / "config.json").read_text())
        mismatches = architecture_mismatches(release, config)
        if mismatches:
            raise ValueError(
                f"{source.name} is not the expected architecture of {release.name}: " + "; ".join(mismatches)
            )
        card = ModelCard.load(folder / "README.md")  # the card must parse back
        if card.data.license != release.license:
            raise ValueError(f"the card's license {card.data.license!r} is not the release's {release.license!r}")
    except Exception as error:  # one release failing must not stop the others
        outcome.error = f"{type(error).__name__}: {error}"
        if folder.exists():
            shutil.rmtree(folder)
    return outcome


def print_plan(outcomes: list[Outcome], missing: list[Release], unknown: list[Path], push: bool, out) -> None:
    done = [o for o in outcomes if o.ok]
    if push:
        print(f"Release upload ({len(done)} repo(s)):", file=out)
    else:
        print(f"Release upload plan - dry run, nothing uploaded ({len(done)} repo(s) would be created; --push "
              "creates them and uploads each folder):", file=out)  # fmt: skip
    if done:
        licenses = {o.repo_id: o.release.license + (f" ({o.release.license_name})" if o.release.license_name else "")
                    for o in done}  # fmt: skip
        width, license_width = max(len(o.repo_id) for o in done), max(len(text) for text in licenses.values())
        print(f"  {'repo id'.ljust(width)}  {'license'.ljust(license_width)}  source file", file=out)
        for o in done:
            print(f"  {o.repo_id.ljust(width)}  {licenses[o.repo_id].ljust(license_width)}  {o.source.name}", file=out)
            total = sum(size for _, size in folder_files(o.folder))
            print(f"  {''.ljust(width)}  files ({human_size(total)}): {describe_files(o.folder)}", file=out)
            if o.also_found:
                print(
                    f"  {''.ljust(width)}  also found, not used: {', '.join(p.name for p in o.also_found)}", file=out
                )
            if o.uploaded:
                print(f"  {''.ljust(width)}  uploaded: {o.uploaded}", file=out)
    failed = [o for o in outcomes if not o.ok]
    if failed:
        print(f"Failed ({len(failed)}):", file=out)
        for o in failed:
            print(f"  {o.release.name} ({o.source}): {o.error}", file=out)
    if missing:
        print(f"Not in the originals folder ({len(missing)}): {', '.join(r.name for r in missing)}", file=out)
    if unknown:
        print(f"Not a release file, skipped ({len(unknown)}): {', '.join(str(p) for p in unknown)}", file=out)


def publish(
    originals_dir,
    output_dir,
    releases: Sequence[Release] = RELEASES,
    *,
    organization: str | None = None,
    only: Sequence[str] | None = None,
    push: bool = False,
    private: bool = False,
    remote_code: bool = True,
    api=None,
    out=None,
) -> list[Outcome]:
    """Convert, check and (with `push`) upload every release of `releases` found under `originals_dir`.

    `releases` defaults to hf_mim's table; pass modified copies (`dataclasses.replace(release, architecture=...)`)
    to check other expected architectures. Returns one `Outcome` per release found."""
    out = sys.stdout if out is None else out
    originals_dir, output_dir = Path(originals_dir), Path(output_dir)
    if not originals_dir.is_dir():
        raise FileNotFoundError(f"--originals_dir {originals_dir} is not a folder.")
    releases = tuple(releases)
    if only:
        selected = []
        for name in only:
            release = release_named(name, releases)
            if release is None:
                raise ValueError(f"--only {name}: no such release; known: {', '.join(r.name for r in releases)}.")
            selected.append(release)
        releases = tuple(r for r in releases if r in selected)
    found, unknown = find_release_files(originals_dir, releases)
    outcomes = []
    for release in releases:
        if release.name not in found:
            continue
        source, *others = found[release.name]
        print(f"converting {source} -> {output_dir / release.name}", file=out, flush=True)
        outcome = convert_one(
            release, source, output_dir / release.name, release.repo_id_for(organization), remote_code
        )
        outcome.also_found = others
        outcomes.append(outcome)
    missing = [r for r in releases if r.name not in found]
    if push:
        api = api or HfApi()
        for outcome in outcomes:
            if not outcome.ok:
                continue
            try:
                with pushing_to(outcome.repo_id):
                    api.create_repo(outcome.repo_id, repo_type="model", private=private, exist_ok=True)
                    info = api.upload_folder(
                        folder_path=str(outcome.folder),
                        repo_id=outcome.repo_id,
                        repo_type="model",
                        commit_message=f"Upload {outcome.release.name} (from {outcome.source.name}) converted with "
                        f"hf_mim {__version__}",
                    )
            except HubPushError:
                # Offline, unauthenticated or unreachable: the next repos would fail alike. The converted folders
                # stay; the plan shows them (and what was uploaded before), the caller the one-line cause.
                print_plan(outcomes, missing, unknown, push, out)
                raise
            outcome.uploaded = str(getattr(info, "commit_url", info))
    print_plan(outcomes, missing, unknown, push, out)
    return outcomes


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--originals_dir", required=True, help="Folder with the original downloads (searched recursively)"
    )
    parser.add_argument("--output_dir", required=True, help="Where the Hub folders are written, one per release")
    parser.add_argument("--only", nargs="+", default=None, metavar="NAME", help="Only these releases (table names)")
    parser.add_argument("--organization", default=None, help="Hub namespace of the repos (default: the table's)")
    parser.add_argument("--push", action="store_true", help="Create the repos and upload (default: dry run)")
    parser.add_argument("--private", action="store_true", help="Create the repos as private ones")
    parser.add_argument("--no_remote_code", action="store_true", help="Leave the remote-code bundle out")
    args = parser.parse_args(argv)
    try:
        outcomes = publish(args.originals_dir, args.output_dir, RELEASES, organization=args.organization,
                           only=args.only, push=args.push, private=args.private,
                           remote_code=not args.no_remote_code)  # fmt: skip
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except HubPushError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    if not outcomes:
        print("error: no release file found", file=sys.stderr)
        return 1
    return 0 if all(o.ok for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
