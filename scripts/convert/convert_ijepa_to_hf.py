#!/usr/bin/env python
"""Convert a released I-JEPA checkpoint (IN1K-vit.h.14-300e.pth.tar, IN1K-vit.h.16-448px-300e.pth.tar,
IN22K-vit.h.14-900e.pth.tar, IN22K-vit.g.16-600e.pth.tar) into a Hub-ready folder.

    python scripts/convert/convert_ijepa_to_hf.py --checkpoint_path IN1K-vit.h.14-300e.pth.tar --output_dir ijepa-vith14-in1k \
        [--encoder context|target] [--num_attention_heads H] [--model_name NAME] [--push_to_hub REPO_ID] \
        [--no_remote_code]

The command line of `hf_mim.models.ijepa.convert_ijepa`, which holds the conversion (key tables, config inference,
head counts by width, model card) and documents what the folder holds. On success it prints the report, one
`key: value` line each; any failure is one `error: ...` line on stderr, exit status 2, and nothing written.
"""

import sys

from hf_mim.models.ijepa.convert_ijepa import main

if __name__ == "__main__":
    sys.exit(main())
