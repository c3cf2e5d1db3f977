"""Readers for the task files of VOLTA's fine-tuning recipes (``config_tasks/*.yml``, ``volta/datasets/*.py``).

One module per file family; features come through the existing LMDB / TSV / npz readers.

* :mod:`.answers`   answer vocabularies (``trainval_ans2label.pkl`` / ``trainval_label2ans.pkl``), VQA answer
  normalisation and soft scores;
* :mod:`.vqa`       VQA v2 / GQA questions, official annotations and VOLTA's ``*_target.pkl`` targets;
* :mod:`.retrieval` Flickr30k / COCO retrieval ``*_ann.jsonl`` and ``hard_negative.pkl``;
* :mod:`.refer`     RefCOCO / RefCOCO+ / RefCOCOg ``refs(unc).p`` + ``instances.json``;
* :mod:`.nlvr2`     NLVR2 ``*.jsonl``;
* :mod:`.snli_ve`   SNLI-VE ``*.jsonl``;
* :mod:`.files`     the shared JSON / JSON-lines / restricted-pickle loading and field checks.

Bad input raises one ``BadRecord`` (a ``ValueError``) or ``FileNotFoundError`` naming the file and the record;
pickles go only through :mod:`jaxvl.data.readers.safe_pickle`.
"""
