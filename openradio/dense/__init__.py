"""Dense tasks on RADIO: a multi-scale backbone for detection/segmentation heads
(:mod:`~openradio.dense.backbone`), segmentation fine-tuning (:mod:`~openradio.dense.finetune`,
data layouts in :mod:`~openradio.dense.datasets`), open-vocabulary segmentation
(:mod:`~openradio.dense.segment`) and image-guided feature upsampling
(:mod:`~openradio.dense.upsample`). See docs/dense.md."""
