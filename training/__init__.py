"""Everything that makes or measures model packs: data loading and splits, architectures, fitting, fusion,
evaluation, metrics, the model card and the synthetic-speech corpus. Inference (``pipeline``) never
imports it."""
