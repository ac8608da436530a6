"""Person-search evaluation: protocol metrics, the detectron2 evaluator and the two-loader inference loop."""
from .detection_metrics import evaluate_detections
from .inference import build_person_search_test_loaders, inference_on_person_search
from .person_search_evaluation import PersonSearchEvaluator, check_score_threshold
from .reid_evaluation import ReIDEvaluator, build_reid_test_loader, evaluate_reid, inference_on_reid  # noqa: F401
from .search_metrics import average_precision, evaluate_search

__all__ = [
    "PersonSearchEvaluator",
    "average_precision",
    "build_person_search_test_loaders",
    "check_score_threshold",
    "evaluate_detections",
    "evaluate_search",
    "inference_on_person_search",
]
