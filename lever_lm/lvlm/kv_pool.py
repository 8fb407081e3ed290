"""Prefix key/values of the fast scoring paths in ONE preallocated tensor, and a batch cache written in place.

Before, a batch's past was built per row and per layer (a zero tensor, then one copy per row and layer), handed to
a ``DynamicCache`` (which concatenated it once more) and the model's own update concatenated it again; storing a
prefix cloned it per row and layer. On a GPU each of those is a kernel launch: thousands per beam step.

Here:

- ``KVPool`` keeps every cached prefix in one tensor ``(layers, 2, slots, *row_shape)``, RIGHT-aligned: an entry of
  length L fills the last L positions of its slot's sequence axis. So the last ``past_max`` positions of any slot
  are that entry left-padded to ``past_max``, exactly the layout of a batch's past, and a whole batch's past (all
  layers, keys and values) is ONE ``index_select``. Storing the prefixes of a batch is one gather + one
  ``index_copy_``. Positions in front of an entry are masked by the attention mask; they hold zeros or earlier
  entries' finite values, which a masked softmax weighs by exactly 0, so results do not depend on them.
- ``prefilled_cache`` wraps a preallocated ``(layers, 2, rows, heads, past + new, head_dim)`` buffer as a
  transformers ``Cache`` whose layers write the new keys/values into their place instead of concatenating; after
  the forward the buffer holds every row's full key/values, where the pool picks up the prefixes to keep.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable, Sequence

from lever_lm.lvlm.base import WorkCounters, to_device_packed

# slots and width grow in these steps, so a pool is reallocated only a few times per process
_SLOT_STEP = 64
_WIDTH_STEP = 64


def _round_up(value: int, step: int) -> int:
    return -(-value // step) * step


class KVPool:
    """Prefix key/values by key, in slots of one tensor (module docstring); least recently used dropped first
    once more than ``max_entries`` are kept (checked by ``trim``, between calls, never while a call uses them)."""

    def __init__(self, counters: WorkCounters, max_entries: int | None = None):
        self.counters = counters
        self.max_entries = max_entries
        self.data = None  # (layers, 2, slots, *row_shape), allocated at the first ``put``
        self.seq_axis: int | None = None  # sequence axis within row_shape
        self._entries: OrderedDict[Hashable, tuple[int, int]] = OrderedDict()  # key -> (slot, length)
        self._free: list[int] = []

    def __contains__(self, key) -> bool:
        return key in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def width(self) -> int:
        return 0 if self.data is None else self.data.shape[3 + self.seq_axis]

    def entry(self, key) -> tuple[int, int]:
        """(slot, length) of ``key``, marked as recently used."""
        self._entries.move_to_end(key)
        return self._entries[key]

    def length(self, key) -> int:
        return self._entries[key][1]

    def clear(self) -> None:
        """Drop every entry; the storage is kept for the next anchor (the same sizes come back)."""
        self._entries.clear()
        self._free = list(range(self.data.shape[2])) if self.data is not None else []

    def trim(self, keep: Sequence[Hashable] = ()) -> None:
        """Drop least recently used entries (other than ``keep``) until at most ``max_entries`` remain."""
        if self.max_entries is None:
            return
        keep = set(keep)
        for key in [k for k in self._entries if k not in keep]:
            if len(self._entries) <= self.max_entries:
                break
            self._free.append(self._entries.pop(key)[0])

    # -- reading

    def slots(self, keys: Sequence[Hashable | None]):
        """Host tensor of each key's slot, marked as recently used (None, a row without a past: slot 0, which its
        attention mask hides)."""
        import torch

        return torch.tensor([self.entry(key)[0] if key is not None else 0 for key in keys], dtype=torch.long)

    def batch_cache(self, config, slots_on_device, past_max: int, new_tokens: int, dtype, device, where: str):
        """(buffer, cache) for one forward of ``len(slots_on_device)`` rows: a ``kv_buffer`` of ``past_max +
        new_tokens`` positions holding each row's past (one gather), wrapped by ``prefilled_cache``."""
        buffer = kv_buffer(config, len(slots_on_device), past_max + new_tokens, dtype, device, where)
        if past_max:
            self.past_into(buffer.narrow(4, 0, past_max), slots_on_device, past_max)
        return buffer, prefilled_cache(buffer, past_max)

    def past_into(self, out, slots_on_device, past_max: int) -> None:
        """Write a batch's past into ``out`` ((layers, 2, rows, *row_shape) with ``past_max`` positions): row i gets
        slot ``slots_on_device[i]``'s last ``past_max`` positions (a row without a prefix may name any slot: its
        positions are masked)."""
        window = self.data.narrow(3 + self.seq_axis, self.width - past_max, past_max)
        out.copy_(window.index_select(2, slots_on_device))
        self.counters["kv_copy_ops"] += 2
        self.counters["kv_copy_bytes"] += 2 * out.numel() * out.element_size()

    # -- writing

    def put(
        self,
        keys: Sequence[Hashable],
        source,
        rows: Sequence[int],
        firsts: Sequence[int],
        lengths: Sequence[int],
        seq_axis: int = 1,
    ) -> None:
        """Store ``source[:, :, rows[i]]``'s positions ``[firsts[i], firsts[i] + lengths[i])`` (sequence axis) under
        ``keys[i]``. ``source`` is (layers, 2, batch rows, *row_shape), e.g. a ``prefilled_cache`` buffer;
        ``seq_axis`` is the sequence axis within row_shape (1 for HF caches: heads, seq, head_dim)."""
        import torch

        if not keys:
            return
        if self.data is None:
            self.seq_axis = seq_axis
        elif seq_axis != self.seq_axis:
            raise ValueError(f"key/values with sequence axis {seq_axis} do not fit a pool with axis {self.seq_axis}")
        self._reserve(source, len(keys), max(lengths))
        width, seq_dim = self.width, 3 + self.seq_axis
        # index[i, j]: the source position landing at position j of the right-aligned entry i (in front of the
        # entry: clamped to 0, masked later)
        ends = torch.tensor([first + length for first, length in zip(firsts, lengths)], dtype=torch.long)
        index = (ends[:, None] - width + torch.arange(width)).clamp(min=0)
        slots = [self._take_slot() for _ in keys]
        index, rows_t, slots_t = to_device_packed(
            self.counters, (index, torch.tensor(list(rows)), torch.tensor(slots)), source.device
        )
        picked = source if list(rows) == list(range(source.shape[2])) else source.index_select(2, rows_t)
        shape = [1] * picked.dim()
        shape[2], shape[seq_dim] = len(keys), width
        expanded = list(picked.shape)
        expanded[seq_dim] = width
        gathered = torch.gather(picked, seq_dim, index.view(shape).expand(expanded))
        self.data.index_copy_(2, slots_t, gathered)
        self.counters["kv_copy_ops"] += 3 if picked is not source else 2
        self.counters["kv_copy_bytes"] += 2 * gathered.numel() * gathered.element_size()
        for key, slot, length in zip(keys, slots, lengths):
            old = self._entries.pop(key, None)
            if old is not None:
                self._free.append(old[0])
            self._entries[key] = (slot, length)

    def _take_slot(self) -> int:
        return self._free.pop(0)

    def _reserve(self, source, new_entries: int, length: int) -> None:
        """Make room for ``new_entries`` more slots and entries of ``length`` positions (grows the one tensor)."""
        import torch

        row_shape = list(source.shape[3:])
        if self.data is not None:
            have = list(self.data.shape[3:])
            have[self.seq_axis] = row_shape[self.seq_axis] = 0
            if have != row_shape or self.data.dtype != source.dtype or self.data.shape[:2] != source.shape[:2]:
                raise ValueError(
                    f"key/values of shape {tuple(source.shape)} do not fit a pool of {tuple(self.data.shape)}"
                )
        slots = 0 if self.data is None else self.data.shape[2]
        need_slots = slots + max(0, new_entries - len(self._free))
        need_width = max(self.width, length)
        if self.data is not None and need_slots == slots and need_width == self.width:
            return
        new_slots = _round_up(need_slots, _SLOT_STEP) if need_slots > slots else slots
        new_width = _round_up(need_width, _WIDTH_STEP) if need_width > self.width else self.width
        shape = list(source.shape)
        shape[2] = new_slots
        shape[3 + self.seq_axis] = new_width
        grown = torch.zeros(shape, dtype=source.dtype, device=source.device)
        if self.data is not None:  # old entries keep their slots, still right-aligned
            grown.narrow(2, 0, slots).narrow(3 + self.seq_axis, new_width - self.width, self.width).copy_(self.data)
            self.counters["kv_copy_ops"] += 1
            self.counters["kv_copy_bytes"] += self.data.numel() * self.data.element_size()
        self._free += list(range(slots, new_slots))
        self.data = grown


def kv_buffer(config, rows: int, width: int, dtype, device, where: str):
    """An uninitialised (layers, 2, rows, kv heads, width, head dim) buffer for ``prefilled_cache``, shaped from an
    HF decoder config (a batch's past and its forward fill all of it). ``where`` names the model in errors."""
    import torch

    layer_types = getattr(config, "layer_types", None) or []
    if any(kind != "full_attention" for kind in layer_types):
        raise ValueError(
            f"{where}: sliding-window attention layers are not supported by the fast path's key/value reuse"
        )
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    return torch.empty((config.num_hidden_layers, 2, rows, kv_heads, width, head_dim), dtype=dtype, device=device)


_CACHE_CLASS = None


def prefilled_cache(buffer, filled: int):
    """A transformers ``Cache`` over ``buffer`` (layers, 2, rows, heads, width, head_dim) whose first ``filled``
    positions hold the past: each layer's ``update`` writes the new key/values in place after them and returns the
    filled part (what ``DynamicCache`` returns after its concatenation)."""
    global _CACHE_CLASS
    if _CACHE_CLASS is None:
        _CACHE_CLASS = _define_cache_classes()
    layer_class, cache_class = _CACHE_CLASS
    return cache_class([layer_class(buffer[layer, 0], buffer[layer, 1], filled) for layer in range(buffer.shape[0])])


def _define_cache_classes():
    from transformers.cache_utils import Cache, DynamicLayer

    class PrefilledLayer(DynamicLayer):
        def __init__(self, keys, values, filled: int):
            super().__init__()
            self.keys, self.values, self.filled = keys, values, filled
            self.dtype, self.device = keys.dtype, keys.device
            self.is_initialized = True

        def update(self, key_states, value_states, cache_kwargs=None):
            end = self.filled + key_states.shape[-2]
            if end > self.keys.shape[-2]:
                raise RuntimeError(f"prefilled cache: {end} positions do not fit a buffer of {self.keys.shape[-2]}")
            self.keys[..., self.filled : end, :].copy_(key_states)
            self.values[..., self.filled : end, :].copy_(value_states)
            self.filled = end
            return self.keys[..., :end, :], self.values[..., :end, :]

        def get_seq_length(self) -> int:
            return self.filled

        def get_max_cache_shape(self) -> int:
            return self.keys.shape[-2]

    class PrefilledCache(Cache):
        def __init__(self, layers):
            super().__init__(layers=layers)

    return PrefilledLayer, PrefilledCache
