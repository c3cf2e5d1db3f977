"""The image store: pretraining pairs stored one record per image, captions referring to it (issue 16, part 2).

The pair layout (``jaxvl.data.builders.pretrain``) writes one ``tf.Example`` per (image, caption) pair, so an
image with five captions has its regions stored five times, and every float goes through TFDS's float-list
serialisation. The image store writes the regions once per image and each caption as a small record naming
its image's row; arrays are raw little-endian bytes with their dtype and shape (``codec``), optionally with
float16 features (half the bytes of the largest field; cast back to float32 on read)::

    jaxvl prepare --source synthetic:num_images=1024,layout=images --out data/
    jaxvl prepare --source volta-cc:data/conceptual_captions,layout=images,features_dtype=float16 --out data/
    jaxvl pretrain --config pretrain:uniter --workdir runs/u \\
        --config.data.dataset=data/jaxvl_synthetic_pretrain_images/num_images-1024/1.0.0

- ``layout``: the directory, its manifest and ``ImageStoreInfo``, and the file names of a split written in shards
  (``jaxvl prepare --workers N``: ``jaxvl.data.builders.images_shards`` writes one pair of tables per shard);
- ``codec``: the record format;
- ``writer``: one split's two tables (``SplitWriter``; ``jaxvl.data.builders.images.ImagePairsBuilder``
  drives it for ``jaxvl prepare``);
- ``source``: the random-access source joining each caption to its image (``open_image_store``), returning the
  records of a prepared ``PretrainPairs`` split, which ``jaxvl.data.grain.open_split`` opens for any pipeline.
"""

from jaxvl.data.imagestore.layout import FEATURES_DTYPES, MANIFEST, ImageStoreInfo, is_image_store, read_manifest
from jaxvl.data.imagestore.source import ImageStorePairs, open_image_store
from jaxvl.data.imagestore.writer import SplitWriter

__all__ = ["FEATURES_DTYPES", "MANIFEST", "ImageStoreInfo", "ImageStorePairs", "SplitWriter", "is_image_store",
           "open_image_store", "read_manifest"]
