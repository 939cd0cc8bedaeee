"""Written by benchmarks/benchmark_presets.py: rerun it rather than editing. Per preset: backbone and pretraining
parameters (exact), default image size, batch size and CPU seconds of one training step (None: not measured,
the note says why)."""

from .sizes import PresetSize

MEASURED_ON = {
    "date": "2026-12-07",
    "machine": "AMD EPYC, 1 thread(s)",
    "torch": "2.14.1+cu130",
    "load_average": "6.5-12.0",
    "presets": "vicregl-tiny-resnet,cae-tiny,vicregl-tiny,ijepa-tiny,capi-tiny,cae-v2-vitt16,cae-v2-vits16,ijepa-small,capi-small,cae-v2-vitb16,cae-vitb16,vicregl-resnet50,vicregl-convnext-small,vicregl-convnext-base,cae-v2-vitl16,cae-vitl16,vicregl-convnext-xlarge,capi-vitl14,ijepa-vith14,ijepa-vitg16,ijepa-vith16-448",
}

# fmt: off
PRESET_SIZES = {
    "capi-vitl14": PresetSize(453_679_104, 940_945_408, 224, 1, 8.612, "median of 1; wall 68.8 s"),
    "capi-small": PresetSize(28_551_936, 60_257_792, 224, 8, 2.778, "median of 3; wall 7.66 s"),
    "capi-tiny": PresetSize(235_136, 478_592, 56, 8, 0.019, "median of 3; wall 0.0678 s"),
    "ijepa-vith14": PresetSize(630_762_240, 1_283_902_208, 224, 1, 15.878, "median of 1; wall 32.7 s"),
    "ijepa-vith16-448": PresetSize(631_668_480, 1_285_917_440, 448, 1, 36.049, "median of 1; wall 66.6 s"),
    "ijepa-vitg16": PresetSize(1_011_368_576, 2_052_288_128, 224, 1, None, "not measured: needs about 24.2 GiB, 15.4 GiB available"),
    "ijepa-small": PresetSize(21_664_896, 46_185_216, 224, 8, 2.655, "median of 3; wall 7.48 s"),
    "ijepa-tiny": PresetSize(138_816, 307_840, 56, 8, 0.013, "median of 3; wall 0.044 s"),
    "cae-vitb16": PresetSize(85_807_872, 148_984_064, 224, 1, 1.94, "median of 3; wall 3.95 s"),
    "cae-vitl16": PresetSize(303_326_208, 412_724_224, 224, 1, 6.462, "median of 2; wall 19.2 s"),
    "cae-v2-vitt16": PresetSize(5_526_720, 5_726_624, 224, 8, 0.844, "median of 3; wall 2.61 s"),
    "cae-v2-vits16": PresetSize(21_670_272, 23_720_576, 224, 8, 2.281, "median of 3; wall 6.01 s"),
    "cae-v2-vitb16": PresetSize(85_807_872, 114_722_048, 224, 1, 1.314, "median of 3; wall 4.07 s"),
    "cae-v2-vitl16": PresetSize(303_326_208, 354_723_584, 224, 1, 4.329, "median of 3; wall 10.3 s"),
    "cae-tiny": PresetSize(150_592, 206_752, 64, 8, 0.029, "median of 3; wall 0.092 s"),
    "vicregl-resnet50": PresetSize(23_508_032, 176_128_064, 224, 2, 9.147, "median of 1; wall 27.9 s"),
    "vicregl-convnext-small": PresetSize(49_441_152, 190_920_064, 224, 2, 31.232, "median of 1; wall 86.4 s"),
    "vicregl-convnext-base": PresetSize(87_548_416, 231_255_552, 224, 2, 35.771, "median of 1; wall 102 s"),
    "vicregl-convnext-xlarge": PresetSize(348_111_872, 500_731_904, 224, 2, 69.568, "median of 1; wall 208 s"),
    "vicregl-tiny": PresetSize(232_288, 298_976, 64, 8, 0.159, "median of 3; wall 0.588 s"),
    "vicregl-tiny-resnet": PresetSize(33_672, 100_360, 64, 8, 0.038, "median of 3; wall 0.0996 s"),
}
# fmt: on
