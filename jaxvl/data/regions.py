"""Region records -> fixed-shape model inputs (host side, numpy).

VOLTA's visual input per image: ``num_regions`` detected regions, each a feature row and a 5-d
location ``[x1/W, y1/H, x2/W, y2/H, area/(W*H)]``, plus a global ``[IMG]`` row prepended (``"first"``)
or appended (``"last"``) whose feature is the mean of the region features and whose location is
``[0, 0, 1, 1, 1]``. Regions beyond ``num_regions`` are dropped; fewer are zero-padded with mask 0.
(Masking for pretraining recomputes the ``[IMG]`` mean inside the compiled step, jaxvl.models.volta.objectives.)
"""

from __future__ import annotations

import numpy as np

from jaxvl.data.records import RegionFeatures

GLOBAL_LOCATION = np.array([0.0, 0.0, 1.0, 1.0, 1.0], np.float32)


def normalised_locations(boxes: np.ndarray, image_h: int, image_w: int) -> np.ndarray:
    """[R, 4] pixel x1y1x2y2 -> [R, 5] ``[x1/W, y1/H, x2/W, y2/H, area/(W*H)]``, clipped to [0, 1]."""
    scale = np.array([image_w, image_h, image_w, image_h], np.float32)
    loc = np.clip(boxes.astype(np.float32) / scale, 0.0, 1.0)
    area = (loc[:, 2] - loc[:, 0]) * (loc[:, 3] - loc[:, 1])
    return np.concatenate([loc, area[:, None]], axis=1).astype(np.float32)


def region_inputs(regions: RegionFeatures, num_regions: int, add_global: str | None = "first") -> dict[str, np.ndarray]:
    """Fixed-shape visual inputs of one image.

    Returns ``features`` [L, D] float32, ``locations`` [L, 5] float32, ``region_mask`` [L] int32 and
    ``boxes`` [L, 4] float32 pixel boxes (the ``[IMG]`` row gets the whole image), where
    L = num_regions + 1 with a global row, else num_regions.
    """
    n = min(regions.num_boxes, num_regions)
    dim = regions.features.shape[1]
    feats = np.zeros((num_regions, dim), np.float32)
    locs = np.zeros((num_regions, 5), np.float32)
    boxes = np.zeros((num_regions, 4), np.float32)
    mask = np.zeros((num_regions,), np.int32)
    feats[:n] = regions.features[:n]
    locs[:n] = normalised_locations(regions.boxes[:n], regions.image_h, regions.image_w)
    boxes[:n] = regions.boxes[:n]
    mask[:n] = 1
    if add_global is None:
        return dict(features=feats, locations=locs, region_mask=mask, boxes=boxes)
    if add_global not in ("first", "last"):
        raise ValueError(f"add_global={add_global!r}; expected 'first', 'last' or None")
    g_feat = feats[:n].sum(0, keepdims=True) / max(n, 1)
    g_box = np.array([[0, 0, regions.image_w, regions.image_h]], np.float32)

    def join(row, rest):
        return np.concatenate([row, rest] if add_global == "first" else [rest, row], axis=0)

    return dict(features=join(g_feat, feats), locations=join(GLOBAL_LOCATION[None], locs),
                region_mask=join(np.ones((1,), np.int32), mask), boxes=join(g_box, boxes))
