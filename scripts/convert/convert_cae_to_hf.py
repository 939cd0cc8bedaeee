#!/usr/bin/env python
"""Convert a CAE (v1) or CAE v2 checkpoint - a release, a full training save or a third-party pretraining save - into
a Hub-ready folder.

    python scripts/convert/convert_cae_to_hf.py --checkpoint_path cae_base_1600ep.pth --output_dir cae-base-1600ep \
        [--num_attention_heads H] [--decoder_num_attention_heads H] [--model_name NAME] [--push_to_hub REPO_ID] \
        [--no_remote_code]

The command line of `hf_mim.models.cae.convert_cae`, which holds the conversion (the Atten4Vis, lxtGH and MMPretrain
layouts, v1 / v2 detection, config inference, head counts by width, model card) and documents what it accepts. On
success it prints the report, one `key: value` line each; any failure is one `error: ...` line on stderr, exit
status 2, and nothing written.
"""

import sys

from hf_mim.models.cae.convert_cae import main

if __name__ == "__main__":
    sys.exit(main())
