"""VOLTA's controlled V&L BERTs: one encoder, five sub-layer plans.

Read top to bottom: ``plan`` (the sub-layer plan, VOLTA's keys) -> ``config`` (``VLConfig``, VOLTA JSON)
-> ``presets`` (the five ctrl plans) -> ``embeddings`` -> ``encoder`` -> ``heads`` -> ``model``
(``VLBertModel``, ``VLBertForPreTraining``, ``get_model``); ``task_heads`` is VOLTA's ``BertForVLTasks``
(the downstream heads on the same encoder, ``VLBertForVLTasks``); ``pairing`` runs a model on blocks of text x
image pairs; ``objectives`` holds the pretraining heads'
masking and losses as pure functions; ``summary`` is ``jaxvl models`` (layouts, parameter counts
against VOLTA's, one forward pass).
"""
