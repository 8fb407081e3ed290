"""The libraries' own, unoptimised generation of one prompt: the reference the adapters' ``generate`` must equal.

- ``flamingo_reference(adapter, prompt, num_beams, max_new_tokens)``: open_flamingo's generation path (cached vision
  conditioning, HF ``generate`` on the whole prompt per beam, stock cross-attention).
- ``qwen_reference(adapter, prompt, num_beams, max_new_tokens)``: Qwen2.5-VL's own ``generate`` from pixel values.

Used by tests/test_inference_generation.py and benchmarks/bench_inference.py ("library batch-1"). torch is imported
inside the functions.
"""

from __future__ import annotations

from lever_lm.lvlm.base import Prompt


def flamingo_reference(adapter, prompt: Prompt, num_beams: int, max_new_tokens: int) -> str:
    """open_flamingo's own generation path for one prompt: cached vision conditioning, HF generate on the whole
    prompt (per beam), stock cross-attention. Only the <image> suppression of ``generate`` is shared."""
    import torch

    item = adapter.assemble(prompt, with_answer=False)
    lang = adapter.model.lang_encoder
    ids = torch.tensor([item.input_ids])
    vision = adapter.stack_vision([item.image_paths])
    try:
        with torch.inference_mode():
            lang._use_cached_vision_x = True
            for layer in lang._get_decoder_layers():
                layer.condition_vis_x(vision.repeat_interleave(num_beams, dim=0))
            out = lang.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=max_new_tokens,
                num_beams=num_beams,
                do_sample=False,
                eos_token_id=adapter.eoc_token_id,
                pad_token_id=adapter.pad_token_id,
                suppress_tokens=[adapter.media_token_id],
            )
    finally:
        lang.clear_conditioned_layers()
        lang._use_cached_vision_x = False
    return adapter.tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True).strip()


def qwen_reference(adapter, prompt: Prompt, num_beams: int, max_new_tokens: int) -> str:
    """Qwen2.5-VL's own generate for one prompt: pixel values in, the model runs vision and rope itself."""
    import torch

    paths = [e.image_path for e in (*prompt.demos, prompt.query)]
    pixel_values, grid = adapter.preprocess_images(paths)
    item = adapter.assemble(prompt, dict(zip(paths, adapter.tokens_per_image(grid))), for_generation=True)
    ids = torch.tensor([item.input_ids])
    with torch.inference_mode():
        out = adapter.model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            pixel_values=pixel_values,
            image_grid_thw=grid,
            max_new_tokens=max_new_tokens,
            num_beams=num_beams,
            do_sample=False,
            temperature=None,
            top_p=None,
            top_k=None,
            pad_token_id=adapter._pad_token_id(),
        )
    return adapter.tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True).strip()
