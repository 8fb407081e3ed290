"""Qwen2.5-VL's 3-D rope positions, the one home of the position code that the adapter (``qwen``) and its fast
scorer (``qwen_fast``) both use, so neither imports the other for it."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def mrope_positions(
    input_ids: Sequence[int], image_token_id: int, image_grids: Sequence[Sequence[int]], merge_size: int
) -> np.ndarray:
    """3-D rope positions (3, L) of an unpadded sequence whose images have (t, h, w) patch grids, in order.

    Same numbers as the model's ``get_rope_index`` for images (tests check it): text advances all three
    components together; an image block starts at the next text position and spreads its merged patches over
    height/width (temporal offset 0 for still images); text resumes after the block's largest position.
    """
    ids = np.asarray(input_ids)
    is_image = ids == image_token_id
    run_starts = np.flatnonzero(is_image & ~np.concatenate(([False], is_image[:-1])))
    if len(run_starts) != len(image_grids):
        raise ValueError(f"{len(run_starts)} image token runs but {len(image_grids)} image grids")
    positions = np.empty((3, len(ids)), dtype=np.int64)
    cursor = next_position = 0
    for start, (frames, height, width) in zip(run_starts, image_grids):
        text_length = start - cursor
        positions[:, cursor:start] = next_position + np.arange(text_length)
        base = next_position + text_length
        rows, cols = int(height) // merge_size, int(width) // merge_size
        count = int(frames) * rows * cols
        positions[0, start : start + count] = base
        positions[1, start : start + count] = base + np.tile(np.repeat(np.arange(rows), cols), int(frames))
        positions[2, start : start + count] = base + np.tile(np.arange(cols), int(frames) * rows)
        next_position = base + max(rows, cols)
        cursor = start + count
    positions[:, cursor:] = next_position + np.arange(len(ids) - cursor)
    return positions
