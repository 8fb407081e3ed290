# Per-rule cluster resources (mem_mb, runtime): the table and its toy/real scales are in lever_lm/resources.py.
from lever_lm.resources import RuleResources

RULE_RESOURCES = RuleResources(config)
