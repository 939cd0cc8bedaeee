"""The publishing wing: what turns a model into a Hub repository.

* `releases`: the table of released checkpoints (names, licenses, metrics, architectures);
* `model_cards`: README.md for converted releases and trained models;
* `remote_code`: the bundler that makes a folder load in plain transformers (`trust_remote_code=True`), and the
  registry of each model type's exported classes;
* `conversion`: the converters' shared steps (safe loading, key accounting, `check_against_reference`, staged
  output folders, upload) and their command-line contract;
* `push`: `pushing_to`, the one form of a failed upload (`error: pushing to <repo> failed: <cause>`).

Floor 1 (ARCHITECTURE.md): it imports only the ground floor (`_version`, `image_processing_utils`) and itself.
"""
