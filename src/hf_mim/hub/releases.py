"""The released checkpoints hf_mim converts: one table read by every converter (`scripts/convert/`), the model cards
(`hf_mim.hub.model_cards`) and the publishing script (`scripts/convert/publish_releases.py`).

Every fact here comes from the notes on the original releases (the projects' READMEs, hub entry points and code;
see each `Metric.source`). Numbers the notes mark as recalled from a paper rather than read from a release are
`Metric.verified = False`: the cards print them with that caveat and keep them out of the `model-index` metadata.

    >>> from hf_mim.hub.releases import release_for_file, releases_for
    >>> release_for_file("downloads/capi_vitl14_i22k.pth").name
    'capi-vitl14-in22k'
    >>> [r.name for r in releases_for("ijepa")][:2]
    ['ijepa-vith14-in1k', 'ijepa-vith16-448-in1k']
"""

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HUB_ORGANIZATION = "hf-mim"  # default namespace of the suggested repo ids (`--organization` overrides it)

# License identifiers of the Hub's model-card `license` field that this table may use (a subset of the Hub's list,
# https://huggingface.co/docs/hub/repositories-licenses); "other" needs `license_name` and `license_link` too.
HUB_LICENSES = frozenset(
    {"apache-2.0", "mit", "bsd-3-clause", "cc-by-4.0", "cc-by-sa-4.0", "cc-by-nc-4.0", "cc-by-nc-sa-4.0", "other"}
)
_LICENSE_NAME = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)*$")  # the Hub's rule for `license_name`
_REPO_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass(frozen=True)
class Paper:
    title: str
    authors: str  # short form for prose, e.g. "Darcet et al."
    venue: str
    arxiv: str
    bibtex: str  # as the authors' README gives it

    @property
    def url(self) -> str:
        return f"https://arxiv.org/abs/{self.arxiv}"


@dataclass(frozen=True)
class Metric:
    """One number the authors report for a release (fields map onto `huggingface_hub.EvalResult`)."""

    name: str  # pretty metric name, e.g. "attentive-probe top-1"
    metric_type: str  # Hub metric id: "accuracy", "mean_iou"
    value: float
    task_type: str  # Hub task id: "image-classification", "image-segmentation"
    task_name: str  # the protocol, e.g. "attentive probe (frozen backbone)"
    dataset_type: str  # Hub dataset id: "imagenet-1k", "scene_parse_150"
    dataset_name: str  # pretty dataset name
    source: str  # where the number was read
    source_url: str
    verified: bool = True  # False: the notes mark it as recalled from the paper, not checked (not in model-index)


@dataclass(frozen=True)
class Method:
    """What every release of one method shares."""

    name: str  # hf_mim's name of the method: the converter is scripts/convert/convert_<converter>_to_hf.py
    display_name: str
    converter: str  # converter script, relative to the repository root
    repository: str  # the original code
    license: str
    license_url: str
    license_name: str | None
    license_note: str  # what the original project states, in one sentence
    tags: tuple[str, ...]
    pipeline_tag: str | None
    parity: str  # measured parity of hf_mim's implementation with the original code (fixtures)


@dataclass(frozen=True)
class Release:
    """One released checkpoint: where it comes from and what its converted folder must be."""

    method: str  # key of METHODS
    name: str  # hf_mim's name, also the suggested repo name
    files: tuple[str, ...]  # accepted file names; the first one found in a download folder is converted
    urls: tuple[str, ...]
    pretraining_data: str
    paper: Paper
    description: str  # one line: architecture and schedule
    # config fields the converted config must have (checked by publish_releases.py; converters use it to decide
    # whether a checkpoint named like this release really is it); values not visible in the weights, e.g. head
    # counts, are passed to the converter from here
    architecture: Mapping[str, Any] = field(default_factory=dict, hash=False)
    datasets: tuple[str, ...] = ()  # Hub dataset ids of the pretraining data, where the Hub has one
    metrics: tuple[Metric, ...] = ()
    key: str = ""  # the converter's own key for the release (e.g. "cae_base_1600ep"); default: name
    repo_id: str = ""  # suggested Hub repo id; default: HUB_ORGANIZATION/name
    notes: tuple[str, ...] = ()  # facts about the files worth stating in the card (unverified names, ...)

    def __post_init__(self):
        if not self.key:
            object.__setattr__(self, "key", self.name)
        if not self.repo_id:
            object.__setattr__(self, "repo_id", f"{HUB_ORGANIZATION}/{self.name}")
        if not _REPO_NAME.match(self.name) or len(self.name) > 96:
            raise ValueError(f"Release name {self.name!r} is not a valid Hub repo name.")
        if not self.files:
            raise ValueError(f"Release {self.name} lists no file names.")

    @property
    def info(self) -> Method:
        return METHODS[self.method]

    @property
    def license(self) -> str:
        return self.info.license

    @property
    def license_url(self) -> str:
        return self.info.license_url

    @property
    def license_name(self) -> str | None:
        return self.info.license_name

    @property
    def file_name(self) -> str:
        """The canonical download name."""
        return self.files[0]

    def repo_id_for(self, organization: str | None = None) -> str:
        """The suggested repo id, in `organization` instead of the table's namespace if given."""
        return self.repo_id if organization is None else f"{organization}/{self.repo_id.split('/', 1)[1]}"


# ------------------------------------------------------------------------------------------------------ methods
def _fixture_parity(code: str, outputs: str, fp32: str, fp64: str) -> str:
    """Measured with scripts/convert/measure_fixture_parity.py on the random-weight fixtures of tests/fixtures, whose
    expected outputs the original code computed (commit in each fixture's README): max over the compared outputs of
    max|hf_mim - original| / max|original|. The parity tests enforce <= 1e-5 (float32) and <= 1e-9 (float64)."""
    return (
        f"hf_mim's implementation was compared with the original code ({code}) on a random-weight checkpoint in the "
        f"original layout, converted by this converter: {outputs} agree to a relative max deviation of {fp32} in "
        f"float32 and {fp64} in float64 (max|hf_mim - original| / max|original|; the tests allow 1e-5 and 1e-9)."
    )


_ADE20K = ("scene_parse_150", "ADE20K")
_IN1K = ("imagenet-1k", "ImageNet-1k")
_VOC = ("pascal_voc", "Pascal VOC 2012 (aug)")

METHODS: dict[str, Method] = {
    "capi": Method(
        name="capi",
        display_name="CAPI",
        converter="scripts/convert/convert_capi_to_hf.py",
        repository="https://github.com/facebookresearch/capi",
        license="apache-2.0",
        license_url="https://github.com/facebookresearch/capi/blob/HEAD/LICENSE",
        license_name=None,
        license_note="The original repository releases its code and model weights under the Apache License 2.0.",
        tags=("capi", "vision", "self-supervised", "masked-image-modeling", "vit"),
        pipeline_tag="image-feature-extraction",
        parity=_fixture_parity(
            "facebookresearch/capi at 98b4fa17",
            "the global representation and the patch feature map at 56x56 and 70x42 px",
            "0 (bit-identical)",
            "0 (bit-identical)",
        ),
    ),
    "ijepa": Method(
        name="ijepa",
        display_name="I-JEPA",
        converter="scripts/convert/convert_ijepa_to_hf.py",
        repository="https://github.com/facebookresearch/ijepa",
        license="cc-by-nc-4.0",
        license_url="https://github.com/facebookresearch/ijepa/blob/HEAD/LICENSE",
        license_name=None,
        license_note="The original repository's LICENSE (CC BY-NC 4.0, non-commercial) covers its code and weights.",
        tags=("ijepa", "vision", "self-supervised", "joint-embedding-predictive-architecture", "vit"),
        pipeline_tag="image-feature-extraction",
        parity=_fixture_parity(
            "facebookresearch/ijepa at 52c1ae95", "the encoder output (all patch tokens)", "2.4e-07", "5.5e-16"
        ),
    ),
    "cae": Method(
        name="cae",
        display_name="CAE",
        converter="scripts/convert/convert_cae_to_hf.py",
        repository="https://github.com/Atten4Vis/CAE",
        license="other",
        license_url="https://github.com/Atten4Vis/CAE",
        license_name="no-license-stated",
        license_note=(
            "The original repository (Atten4Vis/CAE, checked at commit a7fd1628, 2023-11-28) contains no LICENSE file "
            "and its README states no license: no license could be verified, so ask the authors before using the "
            "weights beyond research."
        ),
        tags=("cae", "vision", "self-supervised", "masked-image-modeling", "vit"),
        pipeline_tag="image-feature-extraction",
        parity=_fixture_parity(
            "Atten4Vis/CAE at a7fd1628",
            "the encoder output of a released-layout v1 file and of a v2 training save",
            "2.8e-07",
            "8.2e-16",
        ),
    ),
    "vicregl": Method(
        name="vicregl",
        display_name="VICRegL",
        converter="scripts/convert/convert_vicregl_to_hf.py",
        repository="https://github.com/facebookresearch/VICRegL",
        license="cc-by-nc-4.0",
        license_url="https://github.com/facebookresearch/VICRegL/blob/HEAD/LICENSE",
        license_name=None,
        license_note="The original README: 'This project is released under the CC-BY-NC License' (non-commercial).",
        tags=("vicregl", "vision", "self-supervised", "dense-features"),
        pipeline_tag="image-feature-extraction",
        parity=_fixture_parity(
            "facebookresearch/VICRegL at 803ae4c8",
            "the ConvNeXt dense maps and representation at 64x64 and 96x64 px",
            "8.2e-07",
            "1.9e-15",
        ),
    ),
    "dalle_tokenizer": Method(
        name="dalle_tokenizer",
        display_name="DALL-E dVAE encoder",
        converter="scripts/convert/convert_dalle_tokenizer_to_hf.py",
        repository="https://github.com/openai/DALL-E",
        license="other",
        license_url="https://github.com/openai/DALL-E/blob/HEAD/LICENSE",
        license_name="modified-mit",
        license_note=(
            "The original repository's LICENSE is a 'Modified MIT License' (Software Copyright (c) 2021 OpenAI): MIT "
            "terms plus a request to use the model responsibly and to indicate that it was used."
        ),
        tags=("dall-e", "dvae", "image-tokenizer", "cae", "beit"),
        pipeline_tag=None,
        parity=(
            "hf_mim's tokenizer was compared, on a random-weight encoder pickled like `encoder.pkl` and converted by "
            "this converter, with a float32 forward written from the original definition: the logits agree within "
            "1e-5 (absolute, as tested) and the ids are identical."
        ),
    ),
}

# ------------------------------------------------------------------------------------------------------ papers
CAPI_PAPER = Paper(
    title="Cluster and Predict Latent Patches for Improved Masked Image Modeling",
    authors="Darcet et al.",
    venue="TMLR 2025",
    arxiv="2502.08769",
    bibtex="""@article{darcet2025capi,
  title   = {Cluster and Predict Latents Patches for Improved Masked Image Modeling},
  author  = {Darcet, Timoth{\\'e}e and Baldassarre, Federico and Oquab, Maxime and Mairal, Julien and Bojanowski, Piotr},
  journal = {arXiv},
  year    = {2025}
}""",
)
IJEPA_PAPER = Paper(
    title="Self-Supervised Learning from Images with a Joint-Embedding Predictive Architecture",
    authors="Assran et al.",
    venue="CVPR 2023",
    arxiv="2301.08243",
    bibtex="""@article{assran2023self,
  title={Self-Supervised Learning from Images with a Joint-Embedding Predictive Architecture},
  author={Assran, Mahmoud and Duval, Quentin and Misra, Ishan and Bojanowski, Piotr and Vincent, Pascal and Rabbat, Michael and LeCun, Yann and Ballas, Nicolas},
  journal={arXiv preprint arXiv:2301.08243},
  year={2023}
}""",
)
CAE_PAPER = Paper(
    title="Context Autoencoder for Self-Supervised Representation Learning",
    authors="Chen et al.",
    venue="IJCV 2023",
    arxiv="2202.03026",
    bibtex="""@article{ContextAutoencoder2022,
  title={Context Autoencoder for Self-Supervised Representation Learning},
  author={Chen, Xiaokang and Ding, Mingyu and Wang, Xiaodi and Xin, Ying and Mo, Shentong and Wang, Yunhao and Han, Shumin and Luo, Ping and Zeng, Gang and Wang, Jingdong},
  journal={arXiv preprint arXiv:2202.03026},
  year={2022}
}""",
)
CAEV2_PAPER = Paper(
    title="CAE v2: Context Autoencoder with CLIP Latent Alignment",
    authors="Zhang et al.",
    venue="TMLR 2023",
    arxiv="2211.09799",
    bibtex="""@article{zhang2023cae,
  title={{CAE} v2: Context Autoencoder with {CLIP} Latent Alignment},
  author={Xinyu Zhang and Jiahui Chen and Junkun Yuan and Qiang Chen and Jian Wang and Xiaodi Wang and Shumin Han and Xiaokang Chen and Jimin Pi and Kun Yao and Junyu Han and Errui Ding and Jingdong Wang},
  journal={Transactions on Machine Learning Research},
  issn={2835-8856},
  year={2023}
}""",
)
VICREGL_PAPER = Paper(
    title="VICRegL: Self-Supervised Learning of Local Visual Features",
    authors="Bardes, Ponce and LeCun",
    venue="NeurIPS 2022",
    arxiv="2210.01571",
    bibtex="""@inproceedings{bardes2022vicregl,
  author  = {Adrien Bardes and Jean Ponce and Yann LeCun},
  title   = {VICRegL: Self-Supervised Learning of Local Visual Features},
  booktitle = {NeurIPS},
  year    = {2022},
}""",
)
DALLE_PAPER = Paper(
    title="Zero-Shot Text-to-Image Generation",
    authors="Ramesh et al.",
    venue="ICML 2021",
    arxiv="2102.12092",
    bibtex="""@inproceedings{ramesh2021zero,
  title={Zero-Shot Text-to-Image Generation},
  author={Ramesh, Aditya and Pavlov, Mikhail and Goh, Gabriel and Gray, Scott and Voss, Chelsea and Radford, Alec and Chen, Mark and Sutskever, Ilya},
  booktitle={International Conference on Machine Learning (ICML)},
  year={2021}
}""",
)


# ------------------------------------------------------------------------------------------------------ releases
def _capi(name: str, files: tuple[str, ...], data: str, datasets: tuple[str, ...], knn: float, attentive: float):
    source = ("facebookresearch/capi README", "https://github.com/facebookresearch/capi")
    return Release(
        method="capi",
        name=name,
        files=files,
        urls=(f"https://dl.fbaipublicfiles.com/capi/{files[0]}",),
        pretraining_data=data,
        datasets=datasets,
        paper=CAPI_PAPER,
        description="ViT-L/14 (302M parameters), 16 registers, 2-D RoPE, RMSNorm; 12-block predictor; 224 px",
        architecture={
            "hidden_size": 1024,
            "num_hidden_layers": 24,
            "num_attention_heads": 16,
            "intermediate_size": 4096,
            "patch_size": 14,
            "num_register_tokens": 16,
            "decoder_hidden_size": 1024,
            "decoder_num_hidden_layers": 12,
            "decoder_num_attention_heads": 16,
            "image_size": 224,
        },
        metrics=(
            Metric(
                "k-NN mIoU",
                "mean_iou",
                knn,
                "image-segmentation",
                "k-NN semantic segmentation (frozen patch features, 224 px)",
                *_ADE20K,
                *source,
            ),
            Metric(
                "attentive-probe top-1",
                "accuracy",
                attentive,
                "image-classification",
                "attentive probe (frozen backbone)",
                *_IN1K,
                *source,
            ),
        ),
    )


def _ijepa(name, file, data, datasets, description, architecture, metrics=(), notes=()):
    return Release(
        method="ijepa",
        name=name,
        files=(file,),
        urls=(f"https://dl.fbaipublicfiles.com/ijepa/{file}",),
        pretraining_data=data,
        datasets=datasets,
        paper=IJEPA_PAPER,
        description=description,
        architecture=architecture,
        metrics=metrics,
        notes=notes,
    )


_VIT_H = {
    "hidden_size": 1280,
    "num_hidden_layers": 32,
    "num_attention_heads": 16,
    "intermediate_size": 5120,
    "predictor_hidden_size": 384,
    "predictor_num_hidden_layers": 12,
    "predictor_num_attention_heads": 16,
}
_IJEPA_SOURCE = (
    "I-JEPA paper (arXiv 2301.08243), recalled in hf_mim's notes and not verified against the paper",
    "https://arxiv.org/abs/2301.08243",
)


def _ijepa_metrics(linear: float, low_shot: float) -> tuple[Metric, ...]:
    return (
        Metric(
            "linear-probe top-1",
            "accuracy",
            linear,
            "image-classification",
            "linear probe (frozen, average-pooled patch tokens)",
            *_IN1K,
            *_IJEPA_SOURCE,
            verified=False,
        ),
        Metric(
            "1% labels top-1",
            "accuracy",
            low_shot,
            "image-classification",
            "linear probe on 1% of the labels (frozen)",
            *_IN1K,
            *_IJEPA_SOURCE,
            verified=False,
        ),
    )


_CAE_DRIVE = "https://drive.google.com/drive/folders/1wwhg7nj2GQuU9uthVuQLkEEXEjx90G7g"
_CAE_SOURCE = ("Atten4Vis/CAE README (reproduced with the released weights)", "https://github.com/Atten4Vis/CAE")
_CAE_BASE = {
    "cae_version": 1,
    "hidden_size": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "intermediate_size": 3072,
    "patch_size": 16,
    "image_size": 224,
}
_CAE_LARGE = {
    "cae_version": 1,
    "hidden_size": 1024,
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
    "intermediate_size": 4096,
    "patch_size": 16,
    "image_size": 224,
}


def _cae_v1_metrics(linear, attentive, finetune, ade20k, source=_CAE_SOURCE) -> tuple[Metric, ...]:
    metrics = [
        Metric(
            "linear-probe top-1",
            "accuracy",
            linear,
            "image-classification",
            "linear probe (frozen encoder, cls feature)",
            *_IN1K,
            *source,
        ),
        Metric(
            "attentive-probe top-1",
            "accuracy",
            attentive,
            "image-classification",
            "attentive probe (frozen encoder)",
            *_IN1K,
            *source,
        ),
        Metric("fine-tuning top-1", "accuracy", finetune, "image-classification", "fine-tuning", *_IN1K, *source),
        Metric(
            "mIoU",
            "mean_iou",
            ade20k,
            "image-segmentation",
            "semantic segmentation (UperNet, fine-tuned)",
            *_ADE20K,
            *source,
        ),
    ]
    return tuple(m for m in metrics if m.value is not None)


def _cae(name, key, files, epochs, size, architecture, metrics, urls=(_CAE_DRIVE,), notes=()):
    return Release(
        method="cae",
        name=name,
        key=key,
        files=files,
        urls=urls,
        pretraining_data="ImageNet-1k (images only)",
        datasets=("imagenet-1k",),
        paper=CAE_PAPER,
        description=f"CAE v1 ViT-{size}/16, {epochs} epochs, 224 px (released file: encoder + regressor query token)",
        architecture=architecture,
        metrics=metrics,
        notes=notes,
    )


_CAE_UNVERIFIED_NAME = (
    "The Drive folder does not list file names in the original repositories; this name is used by third-party code "
    "and may be a local rename (unverified): rename the download to it."
)


def _vicregl(key: str, arch: str, size: str, alpha: float, data: str, linear: float, segmentation: float):
    source = ("facebookresearch/VICRegL README", "https://github.com/facebookresearch/VICRegL")
    return Release(
        method="vicregl",
        name=f"vicregl-{key.replace('_', '-')}",
        key=key,
        files=(f"{key}_fullckpt.pth", f"{key}.pth"),
        urls=(
            f"https://dl.fbaipublicfiles.com/vicregl/{key}_fullckpt.pth",
            f"https://dl.fbaipublicfiles.com/vicregl/{key}.pth",
        ),
        pretraining_data=data,
        datasets=("imagenet-1k",) if data == "ImageNet-1k" else (),
        paper=VICREGL_PAPER,
        description=f"{size} backbone, alpha {alpha} (weight of the global loss), 224 px",
        architecture={
            "resnet50": {
                "backbone_type": "resnet",
                "embedding_size": 64,
                "depths": (3, 4, 6, 3),
                "hidden_sizes": (256, 512, 1024, 2048),
            },
            "convnext_small": {
                "backbone_type": "convnext",
                "depths": (3, 3, 27, 3),
                "hidden_sizes": (96, 192, 384, 768),
            },
            "convnext_base": {
                "backbone_type": "convnext",
                "depths": (3, 3, 27, 3),
                "hidden_sizes": (128, 256, 512, 1024),
            },
            "convnext_xlarge": {
                "backbone_type": "convnext",
                "depths": (3, 3, 27, 3),
                "hidden_sizes": (256, 512, 1024, 2048),
            },
        }[arch],
        metrics=(
            Metric(
                "linear top-1",
                "accuracy",
                linear,
                "image-classification",
                "linear classification (frozen backbone)",
                *_IN1K,
                *source,
            ),
            Metric(
                "linear mIoU",
                "mean_iou",
                segmentation,
                "image-segmentation",
                "linear semantic segmentation (frozen backbone)",
                *_VOC,
                *source,
            ),
        ),
        notes=(
            f"Two files are released: the backbone `{key}.pth` and the full checkpoint `{key}_fullckpt.pth` (backbone "
            "+ projectors + online linear probe). The full checkpoint is converted when both are present (the online "
            "probe is dropped), so `AutoModelForPreTraining` can resume pretraining.",
            f"torch.hub entry `{key.replace('0.', '0p')}`.",
        ),
    )


RELEASES: tuple[Release, ...] = (
    # ------------------------------------------------------------------ CAPI (README, hubconf.py)
    _capi("capi-vitl14-p205", ("capi_vitl14_p205.pth",), "Places205", (), 35.2, 79.2),
    _capi("capi-vitl14-lvd", ("capi_vitl14_lvd.pth",), "LVD-142M", (), 32.1, 83.8),
    _capi("capi-vitl14-in22k", ("capi_vitl14_i22k.pth", "capi_vitl14_in22k.pth"), "ImageNet-22k", (), 29.7, 83.6),
    _capi("capi-vitl14-in1k", ("capi_vitl14_in1k.pth",), "ImageNet-1k", ("imagenet-1k",), 29.2, 82.9),
    # ------------------------------------------------------------------ I-JEPA (README, configs)
    _ijepa(
        "ijepa-vith14-in1k",
        "IN1K-vit.h.14-300e.pth.tar",
        "ImageNet-1k",
        ("imagenet-1k",),
        "ViT-H/14 (630M parameters), 300 epochs, 224 px",
        _VIT_H | {"patch_size": 14, "image_size": 224},
        _ijepa_metrics(79.3, 73.3),
    ),
    _ijepa(
        "ijepa-vith16-448-in1k",
        "IN1K-vit.h.16-448px-300e.pth.tar",
        "ImageNet-1k",
        ("imagenet-1k",),
        "ViT-H/16 (630M parameters), 300 epochs, 448 px",
        _VIT_H | {"patch_size": 16, "image_size": 448},
        _ijepa_metrics(81.1, 77.3),
    ),
    _ijepa(
        "ijepa-vith14-in22k",
        "IN22K-vit.h.14-900e.pth.tar",
        "ImageNet-22k",
        (),
        "ViT-H/14 (630M parameters), 66 ImageNet-22k epochs (the file name's '900e'), 224 px",
        _VIT_H | {"patch_size": 14, "image_size": 224},
    ),
    _ijepa(
        "ijepa-vitg16-in22k",
        "IN22K-vit.g.16-600e.pth.tar",
        "ImageNet-22k",
        (),
        "ViT-g/16 (1.01B parameters), 44 ImageNet-22k epochs (the file name's '600e'), 224 px",
        {
            "hidden_size": 1408,
            "num_hidden_layers": 40,
            "num_attention_heads": 16,
            "intermediate_size": 6144,
            "patch_size": 16,
            "image_size": 224,
            "predictor_hidden_size": 384,
            "predictor_num_attention_heads": 16,
        },
        notes=("The predictor depth (16 in the ViT-g config) is not verified against the released file.",),
    ),
    # ------------------------------------------------------------------ CAE v1 (README table) and v2 (abstract)
    _cae(
        "cae-base-300ep",
        "cae_base_300ep",
        ("cae_base_300ep.pth", "cae_dvae_base_300ep.pth"),
        300,
        "B",
        _CAE_BASE,
        _cae_v1_metrics(64.5, 74.0, 83.6, 48.1),
        notes=(_CAE_UNVERIFIED_NAME,),
    ),
    _cae(
        "cae-base-800ep",
        "cae_base_800ep",
        ("cae_base_800ep.pth", "cae_dvae_base_800ep.pth"),
        800,
        "B",
        _CAE_BASE,
        _cae_v1_metrics(68.9, 75.9, 83.8, 49.7),
        notes=(_CAE_UNVERIFIED_NAME,),
    ),
    _cae(
        "cae-base-1600ep",
        "cae_base_1600ep",
        ("cae_base_1600ep.pth", "cae_dvae_base_1600ep.pth"),
        1600,
        "B",
        _CAE_BASE,
        _cae_v1_metrics(70.3, 77.2, 83.9, 50.3),
        urls=("https://drive.google.com/file/d/1CJAjBN0F7-Eijmv2ZmtwpZ6PS_SRcb7I", _CAE_DRIVE),
    ),
    _cae(
        "cae-large-1600ep",
        "cae_large_1600ep",
        ("cae_large_1600ep.pth", "cae_dvae_large_1600ep.pth"),
        1600,
        "L",
        _CAE_LARGE,
        _cae_v1_metrics(77.8, 81.2, 86.2, 54.9),
        urls=("https://drive.google.com/file/d/1jSsB-eKCIWEla7p0c2osoifwV0Cq0U8i", _CAE_DRIVE),
    ),
    Release(
        method="cae",
        name="caev2-large",
        key="caev2_large",
        files=("caev2_large.pth",),
        urls=("https://drive.google.com/drive/folders/1KYi3BvOu4ZeHezurp4SWhO2_X0SR3Sa6",),
        pretraining_data="ImageNet-1k (images only; CLIP ViT-B/16 latents as targets)",
        datasets=("imagenet-1k",),
        paper=CAEV2_PAPER,
        description="CAE v2 ViT-L/16, 300 epochs, 224 px (released file: encoder weights only)",
        architecture=_CAE_LARGE | {"cae_version": 2},
        metrics=_cae_v1_metrics(
            81.7,
            None,
            86.7,
            55.9,
            source=("CAE v2 paper abstract (arXiv 2211.09799)", "https://arxiv.org/abs/2211.09799"),
        ),
        notes=(
            "The Drive folder's file names are not recorded in the original repository: rename the CAEv2-Large "
            "download to `caev2_large.pth`. CAEv2-Tiny / -Small / -Base are released too; their results are only in "
            "the paper's tables, not in this table.",
        ),
    ),
    # ------------------------------------------------------------------ VICRegL (README, hubconf.py)
    _vicregl("resnet50_alpha0.9", "resnet50", "ResNet-50", 0.9, "ImageNet-1k", 71.2, 54.0),
    _vicregl("resnet50_alpha0.75", "resnet50", "ResNet-50", 0.75, "ImageNet-1k", 70.4, 55.9),
    _vicregl("convnext_small_alpha0.9", "convnext_small", "ConvNeXt-S", 0.9, "ImageNet-1k", 75.9, 66.7),
    _vicregl("convnext_small_alpha0.75", "convnext_small", "ConvNeXt-S", 0.75, "ImageNet-1k", 74.6, 67.5),
    _vicregl("convnext_base_alpha0.9", "convnext_base", "ConvNeXt-B", 0.9, "ImageNet-1k", 77.1, 69.3),
    _vicregl("convnext_base_alpha0.75", "convnext_base", "ConvNeXt-B", 0.75, "ImageNet-1k", 76.3, 70.4),
    _vicregl("convnext_xlarge_alpha0.75", "convnext_xlarge", "ConvNeXt-XL", 0.75, "ImageNet-22k", 79.4, 78.7),
    # ------------------------------------------------------------------ DALL-E tokenizer (CAE v1's target network)
    Release(
        method="dalle_tokenizer",
        name="dalle-tokenizer",
        files=("encoder.pkl", "dalle_encoder.pth"),
        urls=(
            "https://cdn.openai.com/dall-e/encoder.pkl",
            "https://download.openmmlab.com/mmselfsup/1.x/target_generator_ckpt/dalle_encoder.pth",
        ),
        pretraining_data="not recorded in hf_mim's notes on the release (see the DALL-E paper)",
        paper=DALLE_PAPER,
        description="DALL-E discrete VAE encoder: 112 px -> 14 x 14 ids from an 8192-entry codebook",
        architecture={
            "hidden_size": 256,
            "vocab_size": 8192,
            "group_count": 4,
            "num_blocks_per_group": 2,
            "num_channels": 3,
            "image_size": 112,
        },
        notes=(
            "`encoder.pkl` is OpenAI's pickled module (read here by a restricted unpickler that runs no code from "
            "the file); `dalle_encoder.pth` is MMPretrain's state-dict copy of the same encoder.",
        ),
    ),
)


# ------------------------------------------------------------------------------------------------------ look-ups
def _normalized(name: str) -> str:
    return str(name).strip().lower().replace("_", "-")


_BY_FILE = {file: release for release in RELEASES for file in release.files}
_BY_NAME = {_normalized(n): r for r in RELEASES for n in (r.name, r.key, r.repo_id.split("/")[-1])}
if len(_BY_FILE) != sum(len(r.files) for r in RELEASES):
    raise RuntimeError("Two releases claim the same file name.")


def releases_for(method: str, releases: tuple[Release, ...] = RELEASES) -> tuple[Release, ...]:
    """The releases of one method (`capi`, `ijepa`, `cae`, `vicregl`, `dalle_tokenizer`), in table order."""
    if method not in METHODS:
        raise ValueError(f"Unknown method {method!r}; known: {', '.join(METHODS)}.")
    return tuple(r for r in releases if r.method == method)


def release_for_file(path: str | Path, releases: tuple[Release, ...] | None = None) -> Release | None:
    """The release whose accepted file names include `path`'s file name (exact spelling), else None."""
    name = Path(path).name
    if releases is None:
        return _BY_FILE.get(name)
    return next((r for r in releases if name in r.files), None)


def release_named(name: str | None, releases: tuple[Release, ...] | None = None) -> Release | None:
    """The release called `name`: its name, the converter's key or its repo name ('_' and '-' alike, any case); a
    repo id (`org/name`) is looked up by its name part."""
    if not name:
        return None
    key = _normalized(str(name).rsplit("/", 1)[-1])
    if releases is None:
        return _BY_NAME.get(key)
    return next((r for r in releases if key in {_normalized(r.name), _normalized(r.key)}), None)


def _comparable(value):
    if isinstance(value, (list, tuple)):
        return [_comparable(v) for v in value]
    return value


def architecture_mismatches(release: Release | Mapping[str, Any], config) -> list[str]:
    """`field: expected X, got Y` for every field of the release's expected architecture that `config` (a
    PretrainedConfig or a dict) does not have; empty if it matches."""
    expected = release.architecture if isinstance(release, Release) else release
    problems = []
    for name, value in expected.items():
        if isinstance(config, Mapping):
            present, actual = name in config, config.get(name)
        else:
            present, actual = hasattr(config, name), getattr(config, name, None)
        if not present:
            problems.append(f"{name}: expected {value!r}, missing from the config")
        elif _comparable(actual) != _comparable(value):
            problems.append(f"{name}: expected {_comparable(value)!r}, got {_comparable(actual)!r}")
    return problems


__all__ = [
    "HUB_LICENSES",
    "HUB_ORGANIZATION",
    "METHODS",
    "RELEASES",
    "Method",
    "Metric",
    "Paper",
    "Release",
    "architecture_mismatches",
    "release_for_file",
    "release_named",
    "releases_for",
]
