"""Data shared by training, evaluation and inference.

- :mod:`vostool.data.files`: frame files (``IMAGE_EXTS``, ``natural_key``, ``list_images``)
  and the one frame reader, ``read_frame``;
- :mod:`vostool.data.masks`: the one mask decoder (``decode_mask``), ``VOID_ID`` and the index
  mask reader of eval and train, ``read_index_mask``;
- :mod:`vostool.data.davis`: the DAVIS layout, its ImageSets and ``SequenceSpec``;
- :mod:`vostool.data.synth`: the synthetic-clip maker (training and ``--adapt``).

Importing ``files``, ``masks`` or ``davis`` does not import torch.
"""
