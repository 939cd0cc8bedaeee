#!/usr/bin/env python
"""Convert a released VICRegL checkpoint (backbone `<name>.pth` or full `<name>_fullckpt.pth`, ResNet-50 or ConvNeXt)
into a Hub-ready folder.

    python scripts/convert/convert_vicregl_to_hf.py --checkpoint_path convnext_small_alpha0.9.pth \
        --output_dir vicregl-convnext-small-alpha0.9 [--model_name NAME] [--push_to_hub REPO_ID] [--no_remote_code]

The command line of `hf_mim.models.vicregl.convert_vicregl`, which holds the conversion (ResNet and ConvNeXt key
tables, config and alpha inference, the check against the original forward, model card) and documents what it
accepts. On success it prints the report, one `key: value` line each; any failure is one `error: ...` line on
stderr, exit status 2, and nothing written.
"""

import sys

from hf_mim.models.vicregl.convert_vicregl import main

if __name__ == "__main__":
    sys.exit(main())
