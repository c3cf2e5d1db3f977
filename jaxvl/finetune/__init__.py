"""Downstream tasks (issue 15): VOLTA's controlled-study evaluation on the shared encoder.

``heads``: the task heads of VOLTA's ``BertForVLTasks`` (VQA / GQA classifiers, NLVR2, SNLI-VE, retrieval, RefCOCO
region logits) as Flax modules; ``losses``: their losses and scores as pure functions; ``retrieval``: N texts x M
images scored in compiled blocks with top-k and gold ranks kept on device. The fine-tuning trainer and the
``jaxvl finetune`` / ``jaxvl evaluate`` commands are still to come.
"""
