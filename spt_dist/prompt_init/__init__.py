"""SPT's prototype initialisation of prompts: streaming, distributed, cached; and the
prompt-to-prototype alignment analysis."""
from .alignment import alignment_metrics, plot_alignment, read_alignment
from .collective import PromptInitError
from .initialize import InitResult, initialize_prompts, select_init_keys
from .plan import STRATEGIES, InitPlan

__all__ = ["InitPlan", "InitResult", "PromptInitError", "STRATEGIES", "alignment_metrics", "initialize_prompts",
           "plot_alignment", "read_alignment", "select_init_keys"]
