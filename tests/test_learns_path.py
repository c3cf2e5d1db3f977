"""The whole real-data path of the ``learns`` recipe, as a user runs it: ``jaxvl world export`` -> ``jaxvl prepare``
(VOLTA's CC LMDBs, Flickr30k Entities) -> ``jaxvl pretrain --config pretrain:uniter,learns,tiny`` -> ``jaxvl ablate
--config ablate:learns``; the pretraining report calls a briefly trained model's MLM learned and an untrained
model's objectives not learned."""

from __future__ import annotations

import json
import logging

import pytest
import tensorflow_datasets as tfds

from jaxvl.cli import main

logging.getLogger("absl").setLevel(logging.ERROR)
tfds.disable_progress_bar()

QUIET = ["--config.progress=False"]


@pytest.mark.slow
def test_export_prepare_pretrain_report_ablate(tmp_path, capsys):
    world, data = tmp_path / "world", tmp_path / "data"
    assert main(["world", "export", "--out", str(world)]) == 0
    for source in (f"volta-cc:{world}/conceptual_captions",
                   f"flickr30k-entities:{world}/flickr30k_entities,features={world}/flickr30k/flickr30k_feat.lmdb"):
        assert main(["prepare", "--source", source, "--out", str(data), "--quiet"]) == 0
    capsys.readouterr()
    pretrain_data = [f"--config.data.dataset={data}/jaxvl_pretrain_pairs/volta_cc-training_feat_all/1.0.0",
                     f"--config.data.vocab_file={world}/vocab.txt"]

    # briefly trained: the report judges MLM and MRC-KL, says ITM was not trained (objective 2)
    run = tmp_path / "trained"
    assert main(["pretrain", "--config", "pretrain:uniter,learns,tiny", "--workdir", str(run), *pretrain_data, *QUIET,
                 "--config.steps=200", "--config.eval_every=200", "--config.checkpoint.every=200"]) == 0
    out = capsys.readouterr().out
    assert "Learned above chance? at step 200" in out and "not trained, so not judged: ITM" in out
    learned = json.loads((run / "learned.json").read_text())
    verdicts = {r["objective"]: r for r in learned["rows"]}
    assert set(verdicts) == {"mlm", "mrc_kl"} and learned["untrained"][""] == ["itm"]
    assert verdicts["mlm"]["verdict"] == "learned", verdicts
    assert json.loads((run / "run.json").read_text())["learned"][""]["mlm"] == "learned"
    assert (run / "learned.md").read_text().startswith("Learned above chance?")

    # untrained (one step at a vanishing learning rate): nothing learned
    blank = tmp_path / "untrained"
    assert main(["pretrain", "--config", "pretrain:uniter,learns,tiny", "--workdir", str(blank), *pretrain_data,
                 *QUIET, "--config.steps=1", "--config.optimizer.learning_rate=1e-12"]) == 0
    rows = json.loads((blank / "learned.json").read_text())["rows"]
    assert rows and all(r["verdict"] == "not learned" for r in rows), rows

    # the ablation of the trained checkpoint on the exported Flickr30k Entities
    capsys.readouterr()
    assert main(["ablate", "--config", "ablate:learns", "--workdir", str(tmp_path / "ablation"), *QUIET,
                 f"--config.checkpoints={run}", "--config.names=trained",
                 f"--config.data.dataset={data}/jaxvl_ablation_phrases/flickr30k_entities-val-flickr30k_feat/1.0.0",
                 f"--config.data.vocab_file={world}/vocab.txt",
                 f"--config.labelmatch.objects_vocab={world}/objects_vocab.txt", "--config.thresholds=(0.0,0.5)",
                 "--config.attention=False", "--config.n_boot=50"]) == 0
    table = (tmp_path / "ablation" / "table.md").read_text()
    assert "| trained | MLM object |" in table or "trained" in capsys.readouterr().out
