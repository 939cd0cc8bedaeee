#!/usr/bin/env python
"""Convert a released CAPI checkpoint (capi_vitl14_{p205,lvd,i22k,in1k}.pth) into a Hub-ready folder.

    python scripts/convert/convert_capi_to_hf.py --checkpoint_path capi_vitl14_lvd.pth --output_dir capi-vitl14-lvd \
        [--model_name capi-vitl14-lvd] [--image_size 224] [--with_pretraining_heads] [--push_to_hub REPO_ID] \
        [--no_remote_code]

The command line of `hf_mim.models.capi.convert_capi`, which holds the conversion (key tables, config inference,
RoPE table checks, model card) and documents what the folder holds. On success it prints the report, one
`key: value` line each; any failure is one `error: ...` line on stderr, exit status 2, and nothing written.
"""

import sys

from hf_mim.models.capi.convert_capi import main

if __name__ == "__main__":
    sys.exit(main())
