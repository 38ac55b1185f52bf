"""Pure compute for deepscan: media decoding, faces, models, ensembles, audio, training and metrics.

Nothing in this package imports celery, boto3, redis, kombu or sqlalchemy, or reads settings: values
arrive as arguments, arrays and dataclasses go in and come out. ``tests/test_purity.py`` enforces it.
"""
