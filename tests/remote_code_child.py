"""Run by tests/test_remote_code.py in a fresh interpreter where `hf_mim` cannot be imported: load the exported
folders through transformers' remote code and write what they compute, for the parent test to compare.

    python tests/remote_code_child.py CASES_JSON RESULT_PT
"""

import json
import sys

sys.modules["hf_mim"] = None  # `import hf_mim` now raises ImportError: plain transformers only

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from transformers import (  # noqa: E402
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    AutoModelForImageClassification,
    AutoModelForPreTraining,
    pipeline,
)


def main(cases_path: str, result_path: str) -> None:
    torch.set_num_threads(1)
    cases = json.loads(open(cases_path).read())
    image = Image.open(cases["image"])
    results = {}
    for name, case in cases["models"].items():
        folder, cls_folder = case["folder"], case["classification_folder"]
        out = {"config_class": type(AutoConfig.from_pretrained(folder, trust_remote_code=True)).__module__}
        processor = AutoImageProcessor.from_pretrained(folder, trust_remote_code=True)
        pixel_values = processor(images=image, return_tensors="pt")["pixel_values"]
        model = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
        with torch.no_grad():
            outputs = model(pixel_values)
        out.update(
            processor_class=type(processor).__module__,
            model_class=type(model).__module__,
            pixel_values=pixel_values,
            last_hidden_state=outputs.last_hidden_state,
            pooler_output=outputs.pooler_output,
        )
        pretraining = AutoModelForPreTraining.from_pretrained(folder, trust_remote_code=True)
        out["pretraining_state"] = {k: v.clone() for k, v in pretraining.state_dict().items()}
        classifier = AutoModelForImageClassification.from_pretrained(cls_folder, trust_remote_code=True).eval()
        with torch.no_grad():
            out["logits"] = classifier(pixel_values).logits
        extractor = pipeline("image-feature-extraction", model=folder, trust_remote_code=True)
        out["pipeline"] = torch.tensor(np.array(extractor(image)))
        try:
            AutoModel.from_pretrained(folder)
            out["without_trust"] = "loaded"
        except ValueError as error:
            out["without_trust"] = str(error)
        results[name] = out
    results["runs"] = {}
    for method, folder in cases.get("runs", {}).items():  # a run's top-level folder: the full pretraining model
        pretraining = AutoModelForPreTraining.from_pretrained(folder, trust_remote_code=True)
        results["runs"][method] = {
            "pretraining_class": type(pretraining).__module__,
            "pretraining_class_name": type(pretraining).__name__,
            "pretraining_state": {k: v.clone() for k, v in pretraining.state_dict().items()},
            "model_class": type(AutoModel.from_pretrained(folder, trust_remote_code=True)).__module__,
        }
    torch.save(results, result_path)


if __name__ == "__main__":
    main(*sys.argv[1:])
