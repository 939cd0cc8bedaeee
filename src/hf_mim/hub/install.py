"""How a reader installs hf_mim, said once for every text hf_mim writes into a folder (model cards, the remote-code
files' headers). hf_mim is not on the Python package index: the command that works is the editable install from a
clone of its repository, the README's "Set up on a fresh machine" (tests/test_readme_snippets.py checks both say
the same)."""

INSTALL_COMMAND = "pip install -e ."
INSTALL_SENTENCE = (
    f"hf_mim is not on the Python package index: install it from a clone of its repository with `{INSTALL_COMMAND}`."
)
