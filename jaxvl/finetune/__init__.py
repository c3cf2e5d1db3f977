"""Downstream tasks (issue 15): VOLTA's controlled-study evaluation on the shared encoder and stage runner.

- the task heads of VOLTA's ``BertForVLTasks`` are model code: ``jaxvl.models.volta.task_heads``; ``losses``: their
  losses and scores as pure functions;
- ``data``: a task's examples as arrays, the Grain pipeline over them, the rows the model reads, the synthetic task
  worlds' splits; ``pretrained``: the encoder (and head) a run starts from (a jaxvl workdir, a sweep member, a VOLTA
  ``.bin``);
- ``step``: the pure fine-tuning update and its vmapped sweep form (seeds, learning rates);
- ``evaluate``: held-out loss and score, results with bootstrap intervals and chance; ``trainer``: ``finetune``
  and ``evaluate`` (``jaxvl finetune`` / ``jaxvl evaluate``) on ``jaxvl.runtime.stage``;
- ``retrieval``: N texts x M images scored in compiled blocks with top-k and gold ranks kept on device.
"""
