"""Data shared by training and inference: the synthetic-clip maker (:mod:`vostool.data.synth`)."""
