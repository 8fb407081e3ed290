"""The one feature module of the selectors: which CLIP features a query and an ICD contribute.

The seed's ``lever_lm`` value ``query_{img,text,img_text}_icd_{idx,img,text,img_text}`` names them:
``img_text`` is the concatenation [image, text] of the L2-normalised CLIP features; ``idx`` means the ICD
is its id alone (v0: its token embedding; v1-v4: a learned embedding per train id, since a pointer network
needs some vector per candidate). numpy only: importing this module never imports torch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

QUERY_MODALITIES = {"img": ("image",), "text": ("text",), "img_text": ("image", "text")}
ICD_MODALITIES = {"idx": (), "img": ("image",), "text": ("text",), "img_text": ("image", "text")}
FEATURE_CHOICES = tuple(f"query_{q}_icd_{c}" for q in QUERY_MODALITIES for c in ICD_MODALITIES)
DEFAULT_FEATURE_CHOICE = "query_img_text_icd_img_text"


@dataclass(frozen=True)
class FeatureChoice:
    name: str
    query: tuple[str, ...]  # modalities concatenated for the query, e.g. ("image", "text")
    icd: tuple[str, ...]  # empty for idx

    def query_dim(self, dims: dict[str, int]) -> int:
        return sum(dims[m] for m in self.query)

    def icd_dim(self, dims: dict[str, int]) -> int:
        return sum(dims[m] for m in self.icd)


def parse_feature_choice(name: str) -> FeatureChoice:
    """``query_img_text_icd_idx`` -> FeatureChoice(query=("image", "text"), icd=()); unknown -> ValueError."""
    if name not in FEATURE_CHOICES:
        raise ValueError(f"lever_lm: unknown feature choice {name!r}; known: {list(FEATURE_CHOICES)}")
    query, icd = name.removeprefix("query_").split("_icd_")
    return FeatureChoice(name, QUERY_MODALITIES[query], ICD_MODALITIES[icd])


@dataclass(frozen=True)
class FeatureTable:
    """CLIP features of one split: row i = record idx i; ``image`` and ``text`` float32 (n, d)."""

    image: np.ndarray
    text: np.ndarray

    def __post_init__(self) -> None:
        for name in ("image", "text"):
            array = getattr(self, name)
            if not isinstance(array, np.ndarray) or array.ndim != 2:
                raise ValueError(f"FeatureTable.{name}: expected a 2-d numpy array, got {type(array).__name__}")
        if len(self.image) != len(self.text):
            raise ValueError(f"FeatureTable: image has {len(self.image)} rows but text has {len(self.text)}")

    def __len__(self) -> int:
        return len(self.image)

    @property
    def dims(self) -> dict[str, int]:
        return {"image": int(self.image.shape[1]), "text": int(self.text.shape[1])}

    def matrix(self, modalities: tuple[str, ...]) -> np.ndarray | None:
        """The concatenated features (n, sum of dims) float32, or None for no modality (``idx``)."""
        if not modalities:
            return None
        parts = [getattr(self, m) for m in modalities]
        return np.ascontiguousarray(np.concatenate(parts, axis=1), dtype=np.float32)


def query_matrix(table: FeatureTable, choice: FeatureChoice) -> np.ndarray:
    return table.matrix(choice.query)


def icd_matrix(table: FeatureTable, choice: FeatureChoice) -> np.ndarray | None:
    return table.matrix(choice.icd)
