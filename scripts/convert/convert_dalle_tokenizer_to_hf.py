#!/usr/bin/env python
"""Convert the DALL-E dVAE encoder (CAE v1's / BEiT's tokenizer) into a Hub-ready `DalleTokenizer` folder.

    python scripts/convert/convert_dalle_tokenizer_to_hf.py --checkpoint_path encoder.pkl --output_dir dalle-tokenizer \
        [--image_size 112] [--model_name NAME] [--push_to_hub REPO_ID] [--no_remote_code]

The command line of `hf_mim.models.cae.convert_dalle_tokenizer`, which holds the conversion (MMPretrain state dicts,
OpenAI's pickled `encoder.pkl` read through a restricted unpickler that runs nothing from the file, the module-tree
check, model card) and documents what it accepts. On success it prints the report, one `key: value` line each; any
failure is one `error: ...` line on stderr, exit status 2, and nothing written.
"""

import sys

from hf_mim.models.cae.convert_dalle_tokenizer import main

if __name__ == "__main__":
    sys.exit(main())
