"""One way for every `--push_to_hub` to fail: `error: pushing to <repo> failed: <cause>`, a non-zero exit status and
the local folder left complete, instead of a traceback from the HTTP client.

`pushing_to(repo_id)` wraps the code that talks to the Hub (the converters' `push_folder_to_hub`,
`scripts/convert/publish_releases.py --push`, the `Trainer` of the `run_*.py` scripts, which creates its repo when it
is built and uploads in `save_model`) and turns a Hub or network failure into a `HubPushError` whose message is that
one line; any other exception passes through unchanged, so a bug is not reported as a failed upload."""

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

# Where the Hub client's exceptions come from: huggingface_hub's own, and those of the HTTP libraries under it
# (huggingface_hub 2.x sends through `httpx2`, older versions through `httpx` or `requests`).
HUB_CLIENT_PACKAGES = frozenset({"huggingface_hub", "httpx", "httpx2", "httpcore", "requests", "urllib3"})


class HubPushError(RuntimeError):
    """An upload to the Hub failed; the message is the command line's line after `error: `."""

    def __init__(self, repo_id: str, cause: str):
        self.repo_id, self.cause = repo_id, cause
        super().__init__(f"pushing to {repo_id} failed: {cause}")


def is_hub_failure(error: BaseException) -> bool:
    """Raised by the Hub client or the network under it (not by hf_mim's own code)."""
    return isinstance(error, (ConnectionError, TimeoutError)) or any(
        cls.__module__.split(".")[0] in HUB_CLIENT_PACKAGES for cls in type(error).__mro__
    )


def push_failure_cause(error: BaseException) -> str:
    """The cause of a failed push in a few words and what to do, on one line."""
    name = type(error).__name__
    status = getattr(getattr(error, "response", None), "status_code", None)
    if name == "OfflineModeIsEnabled":
        return "offline mode is on (HF_HUB_OFFLINE is set); unset it to upload"
    if name == "LocalTokenNotFoundError" or status == 401:
        return "not logged in to the Hub (HTTP 401); run `hf auth login` or set HF_TOKEN"
    if status == 403:
        return "the token may not write to this repository (HTTP 403); use a token with write access"
    first_line = next((line.strip() for line in str(error).splitlines() if line.strip()), "")
    if isinstance(error, (ConnectionError, TimeoutError)) or name in ("ConnectError", "ConnectTimeout", "ReadTimeout"):
        return f"the Hub could not be reached ({name}: {first_line}); check the network"
    return f"{name}: {first_line}" if first_line else name


@contextmanager
def pushing_to(repo_id: str) -> Iterator[None]:
    """Turn a Hub or network failure inside the block into `HubPushError(repo_id, cause)`."""
    try:
        yield
    except HubPushError:
        raise
    except Exception as error:
        if not is_hub_failure(error):
            raise
        raise HubPushError(repo_id, push_failure_cause(error)) from error


def hub_repo_of(training_args) -> str:
    """The repo a `Trainer` pushes to: `--hub_model_id`, else the output folder's name (transformers' rule)."""
    return training_args.hub_model_id or Path(training_args.output_dir).absolute().name


def exit_status(main: Callable, *args) -> int:
    """A script's `__main__`: run `main(*args)`; a `HubPushError` (what it saved stays) becomes its one line on
    stderr and exit status 1, success 0. Other failures keep their traceback: they are not the Hub's."""
    try:
        main(*args)
    except HubPushError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0
