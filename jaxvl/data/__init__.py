"""Data: the synthetic world, readers for the feature formats researchers have, and input pipelines.

Every reader yields the records of ``jaxvl.data.records``.
"""
