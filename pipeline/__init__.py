"""Pure compute for deepscan inference: media decoding, faces, the layers packs load, packs, ensembles, audio
front ends, analysis and explanations. Training lives in ``training/``, which this package never imports.

Nothing in this package imports celery, boto3, redis, kombu or sqlalchemy, or reads settings: values
arrive as arguments, arrays and dataclasses go in and come out. ``tests/test_purity.py`` enforces it.
"""
