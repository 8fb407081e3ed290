"""LVLM adapters (OpenFlamingo, Qwen2.5-VL) behind one interface: see ``base.LVLMAdapter``."""
