"""uvc: compress Vision Transformers to a MACs budget (UVC, USDC) with a Swift core.

`import uvc` needs numpy only; the torch/timm adapter lives in `uvc.torch` and imports
torch when used.
"""
from .cost import CONVENTIONS, Convention, CostReport, count, expected_cost, relaxed_cost, relaxed_inputs
from .latency import LatencyTable
from .plan import ArchPlan, LayerPlan, random_plan
from .solver import Solver, StepResult
from .spec import ViTSpec, spec_names

__version__ = "0.2.0"

__all__ = ["ViTSpec", "spec_names", "ArchPlan", "LayerPlan", "random_plan", "Convention", "CONVENTIONS",
           "CostReport", "count", "expected_cost", "relaxed_cost", "relaxed_inputs",
           "Solver", "StepResult", "LatencyTable"]
