"""Run by tests/test_no_prompt.py inside a pseudo-terminal: with hf_mim imported, load exported remote-code folders
through every Auto class and two pipelines without `trust_remote_code`, and write the classes that came back.

    python tests/no_prompt_child.py CASES_JSON RESULT_JSON
"""

import json
import sys
import time


def main(cases_path: str, result_path: str) -> None:
    import torch
    from PIL import Image
    from transformers import (
        AutoBackbone,
        AutoConfig,
        AutoImageProcessor,
        AutoModel,
        AutoModelForImageClassification,
        AutoModelForPreTraining,
        pipeline,
    )

    import hf_mim  # noqa: F401  (registers the native classes)

    torch.set_num_threads(1)
    cases = json.loads(open(cases_path).read())
    image = Image.open(cases["image"])
    loaded, seconds = {}, {}

    def load(key, auto_class, folder):
        start = time.monotonic()
        obj = auto_class.from_pretrained(folder)
        seconds[key] = round(time.monotonic() - start, 2)
        loaded[key] = type(obj).__module__

    def load_pipeline(key, task, folder):
        start = time.monotonic()
        pipe = pipeline(task, model=folder)
        pipe(image)
        seconds[key] = round(time.monotonic() - start, 2)
        loaded[f"{key}:model"] = type(pipe.model).__module__
        loaded[f"{key}:image_processor"] = type(pipe.image_processor).__module__

    for name, folder in cases["folders"].items():
        for auto_class in (AutoConfig, AutoImageProcessor, AutoModel, AutoModelForPreTraining, AutoBackbone):
            load(f"{name}/{auto_class.__name__}", auto_class, folder)
        load_pipeline(f"{name}/pipeline(image-feature-extraction)", "image-feature-extraction", folder)
    for name, folder in cases["classification_folders"].items():
        load(f"{name}/AutoModelForImageClassification", AutoModelForImageClassification, folder)
        load_pipeline(f"{name}/pipeline(image-classification)", "image-classification", folder)
    result = {
        "loaded": loaded,
        "seconds": seconds,
        # Modules transformers imports from a folder's remote code live under `transformers_modules`.
        "remote_modules": sorted(m for m in sys.modules if m.startswith("transformers_modules")),
    }
    with open(result_path, "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main(*sys.argv[1:])
